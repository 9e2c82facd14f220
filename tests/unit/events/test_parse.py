"""parse_event: every reject reason, native and Segment forms of every type, and the mapping."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamscore.config import Settings
from streamscore.errors import ConfigError, InvalidEvent
from streamscore.events import (
    REJECT_REASONS,
    RFC3339_PATTERN,
    SCHEMA_FILE_BY_TOPIC,
    SCHEMAS_DIR_ENV,
    SEGMENT_TRACK_ALIASES,
    SEGMENT_TYPE_ALIASES,
    TOPIC_BY_TYPE,
    TYPES_BY_TOPIC,
    Event,
    EventType,
    Limits,
    TopicKind,
    compile_input_schemas,
    format_time_ms,
    load_schema,
    parse_event,
    schemas_dir,
)
from streamscore.events.schemas import input_validators

NOW_MS = 1_714_564_800_123  # 2024-05-01T12:00:00.123Z
NOW = "2024-05-01T12:00:00.123Z"
LIMITS = Limits()
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Safari/605.1.15"
PAGE_VIEWS = TopicKind.PAGE_VIEWS
# A Segment `type` (and `event` for track) that yields each of our types.
SEGMENT_CALL_BY_TYPE: dict[EventType, dict[str, str]] = {
    EventType.PAGE_VIEW: {"type": "page"},
    EventType.EMAIL_OPEN: {"type": "track", "event": "Email Opened"},
    EventType.EMAIL_CLICK: {"type": "track", "event": "Email Link Clicked"},
    EventType.DOWNLOAD: {"type": "track", "event": "Whitepaper Downloaded"},
    EventType.WEBINAR_SIGNUP: {"type": "track", "event": "Webinar Registered"},
    EventType.TRIAL_SIGNUP: {"type": "track", "event": "Trial Started"},
    EventType.DEMO_REQUEST: {"type": "track", "event": "Demo Requested"},
    EventType.CONTACT_REQUEST: {"type": "track", "event": "Contact Requested"},
    EventType.UNSUBSCRIBE: {"type": "track", "event": "Unsubscribed"},
    EventType.IDENTIFY: {"type": "identify"},
    EventType.ALIAS: {"type": "alias", "previousId": "anon-1"},
    EventType.GROUP: {"type": "group", "groupId": "acct-1"},
    EventType.TRACK: {"type": "track", "event": "Form Submitted"},
}
# The fields a native event of these types needs besides the envelope, and what they become.
NATIVE_EXTRA: dict[EventType, tuple[dict[str, str], str | None, str | None]] = {
    EventType.ALIAS: ({"previous_id": "anon-1"}, None, "anon-1"),
    EventType.GROUP: ({"group_id": "acct-1"}, None, "acct-1"),
    EventType.TRACK: ({"event": "Form Submitted"}, "Form Submitted", None),
}


def native(type_: str = "page_view", **fields: Any) -> dict[str, Any]:
    """A native envelope as a website tracker sends it."""
    doc: dict[str, Any] = {
        "event_id": "evt-01HX3Z9K7Q",
        "lead_id": "lead-8f2f2c7d",
        "type": type_,
        "time": NOW,
        "properties": {"path": "/pricing", "title": "Pricing"},
        "context": {"user_agent": UA, "ip": "203.0.113.9"},
    }
    doc.update(fields)
    return doc


def segment(**fields: Any) -> dict[str, Any]:
    """A Segment analytics.js message as delivered by a Segment webhook destination."""
    doc: dict[str, Any] = {
        "anonymousId": "507f191e810c19729de860ea",
        "messageId": "ajs-next-1714564800123-4f1c8e2a",
        "timestamp": NOW,
        "originalTimestamp": "2024-05-01T12:00:00.100Z",
        "receivedAt": "2024-05-01T12:00:00.456Z",
        "sentAt": "2024-05-01T12:00:00.400Z",
        "context": {"ip": "203.0.113.9", "userAgent": UA, "library": {"name": "analytics.js"}},
        "properties": {},
        "type": "page",
        "version": 2,
    }
    doc.update(fields)
    return doc


def without(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in keys}


def parse(
    doc: dict[str, Any] | bytes | None, kind: TopicKind = PAGE_VIEWS, limits: Limits = LIMITS
) -> Event:
    raw = doc if doc is None or isinstance(doc, bytes) else orjson.dumps(doc)
    return parse_event(raw, kind, NOW_MS, limits)


def reject(doc: dict[str, Any] | bytes | None, kind: TopicKind = PAGE_VIEWS) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse(doc, kind)
    assert info.value.reason in REJECT_REASONS
    return info.value


LATIN1 = '{"event_id": "e1", "lead_id": "Zoë", "type": "page_view", "time": 1}'.encode("latin-1")
BIG = orjson.dumps(native(properties={"blob": "x" * 70_000}))

# (reason, payload, topic) - each a message a real producer could plausibly send.
REJECTS: list[tuple[str, dict[str, Any] | bytes | None, TopicKind]] = [
    ("too_large", BIG, PAGE_VIEWS),
    ("too_large", b"\xff" * 70_000, PAGE_VIEWS),  # checked before decoding
    ("empty", None, PAGE_VIEWS),
    ("empty", b"", PAGE_VIEWS),
    ("empty", b" \r\n\t", PAGE_VIEWS),
    ("not_utf8", LATIN1, PAGE_VIEWS),
    ("not_utf8", b"\xef\xbb" + orjson.dumps(native()), PAGE_VIEWS),  # a torn BOM
    ("malformed_json", orjson.dumps(native())[:-7], PAGE_VIEWS),  # truncated
    ("malformed_json", b"{'event_id': 'e1', 'type': 'page_view'}", PAGE_VIEWS),
    ("malformed_json", b'{"time": NaN}', PAGE_VIEWS),
    ("malformed_json", b"\xef\xbb\xbf" + orjson.dumps(native()), PAGE_VIEWS),  # BOM
    ("not_an_object", b'[{"type": "page_view"}]', PAGE_VIEWS),
    ("not_an_object", b'"page_view"', PAGE_VIEWS),
    ("not_an_object", b"null", PAGE_VIEWS),
    ("schema", without(native(), "event_id"), PAGE_VIEWS),
    ("schema", native(properties=["path", "/pricing"]), PAGE_VIEWS),
    ("schema", native(event_id=""), PAGE_VIEWS),
    ("schema", native(time=True), PAGE_VIEWS),
    ("schema", native(context={"user_agent": ["Mozilla"]}), PAGE_VIEWS),
    ("schema", segment(anonymousId=None), PAGE_VIEWS),
    ("schema", without(segment(), "timestamp", "originalTimestamp"), PAGE_VIEWS),
    ("schema", segment(type="identify", context={"traits": "ada@example.com"}), TopicKind.PROFILES),
    ("unknown_type", native("page_visit"), PAGE_VIEWS),
    ("unknown_type", native("Page View"), PAGE_VIEWS),
    ("unknown_type", segment(type="screen", name="Home"), PAGE_VIEWS),
    ("unknown_type", segment(type="track", event="Order Completed"), TopicKind.DOWNLOADS),
    ("unknown_type", segment(type="track", event="Form Submitted"), TopicKind.DOWNLOADS),
    ("unknown_type", segment(type="track", event="email opened"), TopicKind.EMAIL_EVENTS),
    ("wrong_topic", native("download"), PAGE_VIEWS),
    ("wrong_topic", native("identify", event_id=""), PAGE_VIEWS),  # beats the schema error
    ("wrong_topic", segment(type="track", event="Email Opened"), TopicKind.DOWNLOADS),
    ("wrong_topic", segment(type="page"), TopicKind.PROFILES),
    ("bad_time", native(time="2024-02-30T10:00:00Z"), PAGE_VIEWS),  # right shape, no such day
    ("bad_time", native(time="yesterday"), PAGE_VIEWS),
    ("bad_time", native(time="2024-05-01 12:00:00"), PAGE_VIEWS),  # no T, no timezone
    ("bad_time", native(time="2024-05-01T12:00:00"), PAGE_VIEWS),  # no timezone
    ("bad_time", native(time="1714564800123"), PAGE_VIEWS),  # epoch ms as a string
    ("bad_time", native(time=1714564800123.5), PAGE_VIEWS),
    ("bad_time", segment(timestamp="Wed, 01 May 2024 12:00:00 GMT"), PAGE_VIEWS),
    ("time_out_of_range", native(time=1_714_564_800), PAGE_VIEWS),  # epoch seconds, not ms
    ("time_out_of_range", native(time="2024-05-01T13:00:00Z"), PAGE_VIEWS),  # an hour ahead
    ("time_out_of_range", native(time="2023-03-27T12:00:00Z"), PAGE_VIEWS),  # > 400 days old
    ("time_out_of_range", native(time=1e20), PAGE_VIEWS),
    ("time_out_of_range", segment(timestamp=NOW_MS + 300_001), PAGE_VIEWS),
    ("too_many_properties", native(properties={f"p{i}": i for i in range(199)}), PAGE_VIEWS),
    (
        "too_many_properties",
        segment(
            properties={f"p{i}": i for i in range(100)},
            traits={f"t{i}": i for i in range(60)},
            context={f"c{i}": i for i in range(41)},
        ),
        PAGE_VIEWS,
    ),
    ("bad_lead_id", native(lead_id="   "), PAGE_VIEWS),
    ("bad_lead_id", native(lead_id="lead-42\n"), PAGE_VIEWS),
    ("bad_lead_id", native(lead_id="lead\x0042"), PAGE_VIEWS),
    ("bad_lead_id", native(lead_id="lead\x7f"), PAGE_VIEWS),
    ("bad_lead_id", native(lead_id="x" * 257), PAGE_VIEWS),
    ("bad_lead_id", native(lead_id=""), PAGE_VIEWS),
    ("bad_lead_id", segment(userId="user\t1234"), PAGE_VIEWS),
    ("bad_lead_id", segment(anonymousId="", userId=None), PAGE_VIEWS),
]


@pytest.mark.parametrize(
    ("reason", "payload", "kind"),
    REJECTS,
    ids=[f"{i:02d}-{r[0]}" for i, r in enumerate(REJECTS)],
)
def test_rejects_with_reason(
    reason: str, payload: dict[str, Any] | bytes | None, kind: TopicKind
) -> None:
    error = reject(payload, kind)
    assert error.reason == reason, error.detail
    assert error.detail


def test_every_reject_reason_is_exercised() -> None:
    # bad_amount is parse_outcome's only (tests/unit/outcomes/test_outcome_events.py exercises it).
    # bad_amount is the outcomes parser's, unknown_event the worker's (runtime.tracking),
    # merge_refused the worker's too (runtime.scorer, tests/integration/test_identity_merge.py).
    assert {reason for reason, _, _ in REJECTS} == set(REJECT_REASONS) - {
        "bad_amount",
        "unknown_event",
        "merge_refused",
    }
    assert len(REJECT_REASONS) == len(set(REJECT_REASONS))


def test_schema_detail_names_the_field_path() -> None:
    assert reject(native(properties={"path": 7})).detail == "data.properties.path must be string"
    assert "['event_id']" in reject(without(native(), "event_id")).detail
    assert "userId or anonymousId" in reject(segment(anonymousId=None)).detail
    detail = reject(without(segment(), "timestamp", "originalTimestamp")).detail
    assert "timestamp or originalTimestamp" in detail


def test_details_name_the_problem() -> None:
    assert reject(native("download")).detail == (
        "download belongs on the downloads topic, not page_views"
    )
    unknown = reject(segment(type="track", event="Order Completed"), TopicKind.DOWNLOADS)
    assert unknown.detail == "Segment track event 'Order Completed' is not an event type"
    assert "U+0000 at index 4" in reject(native(lead_id="lead\x0042")).detail
    assert "257 characters" in reject(native(lead_id="x" * 257)).detail
    assert "in the future" in reject(native(time="2024-05-01T13:00:00Z")).detail
    long_type = reject(native("x" * 10_000)).detail
    assert len(long_type) < 200


def test_size_limit_is_inclusive() -> None:
    raw = orjson.dumps(native())
    assert parse(raw, limits=dataclasses.replace(LIMITS, max_event_bytes=len(raw)))
    with pytest.raises(InvalidEvent, match="too_large"):
        parse(raw, limits=dataclasses.replace(LIMITS, max_event_bytes=len(raw) - 1))


def test_time_bounds_are_inclusive() -> None:
    assert parse(native(time=NOW_MS + LIMITS.max_future_skew_ms)).time_ms > NOW_MS
    assert parse(native(time=NOW_MS - LIMITS.max_age_ms)).time_ms < NOW_MS
    assert reject(native(time=NOW_MS - LIMITS.max_age_ms - 1)).reason == "time_out_of_range"


def test_property_count_limit_is_inclusive() -> None:
    doc = native(properties={f"p{i}": i for i in range(198)})  # + 2 context keys = 200
    assert len(parse(doc).properties) == 198


# --- every type, native and Segment, on its own topic -----------------------------------------


@pytest.mark.parametrize("event_type", list(EventType))
def test_native_form_of_every_type(event_type: EventType) -> None:
    kind = TOPIC_BY_TYPE[event_type]
    extra, name, link = NATIVE_EXTRA.get(event_type, ({}, None, None))
    event = parse(native(event_type.value, traits={"email": "ada@example.com"}, **extra), kind)
    assert event == Event(
        event_id="evt-01HX3Z9K7Q",
        lead_id="lead-8f2f2c7d",
        type=event_type,
        time_ms=NOW_MS,
        properties={"path": "/pricing", "title": "Pricing"},
        context={"user_agent": UA, "ip": "203.0.113.9"},
        traits={"email": "ada@example.com"},
        name=name,
        link=link,
    )
    assert event.type is event_type


@pytest.mark.parametrize("event_type", list(EventType))
def test_segment_form_of_every_type(event_type: EventType) -> None:
    event = parse(segment(**SEGMENT_CALL_BY_TYPE[event_type]), TOPIC_BY_TYPE[event_type])
    assert event.type is event_type
    assert event.event_id == "ajs-next-1714564800123-4f1c8e2a"
    assert event.lead_id == "507f191e810c19729de860ea"
    assert event.time_ms == NOW_MS


@pytest.mark.parametrize("name", sorted(SEGMENT_TRACK_ALIASES))
def test_every_track_alias_is_accepted_on_its_topic_only(name: str) -> None:
    event_type = SEGMENT_TRACK_ALIASES[name]
    for kind in TopicKind:
        doc = segment(type="track", event=name)
        if kind == TOPIC_BY_TYPE[event_type]:
            assert parse(doc, kind).type is event_type
        else:
            assert reject(doc, kind).reason == "wrong_topic"


@pytest.mark.parametrize("event_type", list(EventType))
def test_every_native_type_is_accepted_on_its_topic_only(event_type: EventType) -> None:
    doc = native(event_type.value, **NATIVE_EXTRA.get(event_type, ({}, None, None))[0])
    for kind in TopicKind:
        if kind == TOPIC_BY_TYPE[event_type]:
            assert parse(doc, kind).type is event_type
        else:
            assert reject(doc, kind).reason == "wrong_topic"


def _enum_strings(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_enum_strings(item) for item in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {v for v in node.get("enum", []) if isinstance(v, str)}
    if isinstance(node.get("const"), str):
        found.add(node["const"])
    return found.union(*(_enum_strings(v) for k, v in node.items() if k not in ("enum", "const")))


@pytest.mark.parametrize("kind", list(TopicKind))
def test_schema_type_lists_match_the_python_tables(kind: TopicKind) -> None:
    schema = load_schema(SCHEMA_FILE_BY_TOPIC[kind])
    assert schema["$defs"]["native"]["properties"]["type"]["enum"] == list(TYPES_BY_TOPIC[kind])
    segment_names = _enum_strings(schema["$defs"]["segment"])
    allowed = set(SEGMENT_TYPE_ALIASES) | {"track"}
    allowed |= {name for name, t in SEGMENT_TRACK_ALIASES.items() if TOPIC_BY_TYPE[t] == kind}
    assert segment_names <= allowed
    assert {n for n, t in SEGMENT_TRACK_ALIASES.items() if TOPIC_BY_TYPE[t] == kind} <= (
        segment_names
    )


def test_types_by_topic_partitions_the_event_types() -> None:
    listed = [t for types in TYPES_BY_TOPIC.values() for t in types]
    assert sorted(listed) == sorted(EventType)
    assert set(TYPES_BY_TOPIC) == set(TopicKind) == set(SCHEMA_FILE_BY_TOPIC)


def test_time_pattern_matches_every_schema() -> None:
    for path in sorted(schemas_dir().glob("*.json")):
        text = path.read_text(encoding="utf-8")
        patterns = {
            node["pattern"]
            for node in _walk(json.loads(text))
            if isinstance(node.get("pattern"), str) and node["pattern"].startswith("^[0-9]{4}-")
        }
        assert patterns == {RFC3339_PATTERN}, path.name


def _walk(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [found for item in node for found in _walk(item)]
    if isinstance(node, dict):
        return [node, *(found for value in node.values() for found in _walk(value))]
    return []


# --- time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "time",
    [
        "2024-05-01T12:00:00.123Z",
        "2024-05-01T14:00:00.123+02:00",
        "2024-05-01T07:30:00.123-04:30",
        "2024-05-01T12:00:00.123000Z",
        "2024-05-01T12:00:00.123999999Z",  # sub-millisecond digits are floored
        "2024-05-02T01:00:00.123+13:00",
        1_714_564_800_123,
        1_714_564_800_123.0,  # JSON Schema counts an integral float as an integer
    ],
)
def test_rfc3339_offsets_and_epoch_ms_give_the_same_instant(time: str | int | float) -> None:
    assert parse(native(time=time)).time_ms == NOW_MS
    assert parse(segment(timestamp=time)).time_ms == NOW_MS


def test_whole_seconds_and_short_fractions() -> None:
    assert parse(native(time="2024-05-01T12:00:00Z")).time_ms == NOW_MS - 123
    assert parse(native(time="2024-05-01T12:00:00.1Z")).time_ms == NOW_MS - 23


def test_format_time_ms() -> None:
    assert format_time_ms(NOW_MS) == NOW
    assert format_time_ms(0) == "1970-01-01T00:00:00.000Z"
    assert parse(native(time=format_time_ms(NOW_MS - 1))).time_ms == NOW_MS - 1


# --- Segment mapping ----------------------------------------------------------------------------


def test_segment_page_path_is_copied_from_context() -> None:
    doc = segment(
        properties={"title": "Pricing"},
        context={"page": {"path": "/pricing", "url": "https://example.com/pricing"}},
    )
    event = parse(doc)
    assert event.properties == {"title": "Pricing", "path": "/pricing"}
    assert event.context["page"] == {"path": "/pricing", "url": "https://example.com/pricing"}


def test_segment_page_path_in_properties_wins() -> None:
    doc = segment(properties={"path": "/a"}, context={"page": {"path": "/b"}})
    assert parse(doc).properties == {"path": "/a"}


def test_segment_page_path_without_properties() -> None:
    doc = without(segment(context={"page": {"path": "/docs"}}), "properties")
    assert parse(doc).properties == {"path": "/docs"}
    track = segment(type="track", event="page_view", context={"page": {"path": "/docs"}})
    assert parse(track).properties == {"path": "/docs"}


def test_segment_path_is_only_copied_for_page_views() -> None:
    doc = segment(type="track", event="Demo Requested", context={"page": {"path": "/demo"}})
    assert parse(doc, TopicKind.DOWNLOADS).properties == {}


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ({"userId": "user-1234"}, "user-1234"),
        ({"userId": None}, "507f191e810c19729de860ea"),
        ({}, "507f191e810c19729de860ea"),
        ({"userId": "user-1234", "anonymousId": None}, "user-1234"),
        ({"userId": "user-1234", "anonymousId": ...}, "user-1234"),
    ],
)
def test_segment_lead_is_user_id_else_anonymous_id(ids: dict[str, Any], expected: str) -> None:
    doc = segment(**ids)
    doc = {k: v for k, v in doc.items() if v is not ...}
    assert parse(doc).lead_id == expected


def test_segment_time_falls_back_to_original_timestamp() -> None:
    doc = without(segment(originalTimestamp="2024-05-01T11:59:59.000Z"), "timestamp")
    assert parse(doc).time_ms == NOW_MS - 1123


def test_segment_traits_merge_explicit_traits_win() -> None:
    doc = segment(
        type="identify",
        userId="user-1234",
        traits={"email": "ada@new.example.com", "title": "CTO"},
        context={
            "userAgent": UA,
            "traits": {"email": "ada@old.example.com", "plan": "trial"},
        },
    )
    event = parse(doc, TopicKind.PROFILES)
    assert event.type is EventType.IDENTIFY
    assert event.traits == {"email": "ada@new.example.com", "title": "CTO", "plan": "trial"}
    assert event.context == {
        "userAgent": UA,
        "user_agent": UA,
        "traits": {"email": "ada@old.example.com", "plan": "trial"},
    }


def test_segment_context_traits_alone_become_traits() -> None:
    doc = segment(type="track", event="Trial Started", context={"traits": {"plan": "team"}})
    assert parse(doc, TopicKind.DOWNLOADS).traits == {"plan": "team"}


def test_segment_user_agent_is_normalized_and_context_kept() -> None:
    event = parse(segment())
    assert event.context == {
        "ip": "203.0.113.9",
        "userAgent": UA,
        "user_agent": UA,
        "library": {"name": "analytics.js"},
    }


def test_a_message_with_message_id_is_segment_shaped() -> None:
    # A native envelope that happens to carry messageId is validated as Segment, and fails.
    assert reject(native(messageId="m-1")).reason == "unknown_type"


# --- lead ids and defaults ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "lead_id",
    [
        "{acct:42}:*",
        "lead 42",
        " lead-42 ",
        "Zoë 李",
        "📧 ada@example.com",
        "a" * 256,
        "😀" * 256,  # 256 code points, 1024 UTF-8 bytes
        "\u200b",  # zero-width space is not whitespace
        "\u0085x\u00a0",  # Unicode whitespace around a character
        "ss:v1:{lead}:*",
        "-",
    ],
)
def test_odd_lead_ids_are_accepted_as_is(lead_id: str) -> None:
    assert parse(native(lead_id=lead_id)).lead_id == lead_id
    assert parse(segment(userId=lead_id)).lead_id == lead_id


def test_optional_objects_default_to_empty_read_only_mappings() -> None:
    event = parse(without(native(), "properties", "context"))
    assert event.properties == {} and event.context == {} and event.traits == {}
    with pytest.raises(TypeError):
        event.properties["x"] = 1  # type: ignore[index]


def test_extra_top_level_fields_are_ignored() -> None:
    assert parse(native(campaign="spring", version=3, lead_id="lead-1")).lead_id == "lead-1"


def test_event_is_frozen() -> None:
    event = parse(native())
    with pytest.raises(AttributeError):
        event.lead_id = "other"  # type: ignore[misc]


def test_limits_from_settings() -> None:
    settings = Settings(max_event_bytes=1024, max_future_skew_s=60, max_event_age_s=86400)
    assert Limits.from_settings(settings) == Limits(
        max_event_bytes=1024, max_properties=200, max_future_skew_ms=60_000, max_age_ms=86_400_000
    )
    assert Limits.from_settings(Settings()) == Limits()


# --- schema lookup ------------------------------------------------------------------------------


def test_schemas_dir_defaults_to_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCHEMAS_DIR_ENV, raising=False)
    assert (schemas_dir() / "page-views.v1.json").is_file()
    compile_input_schemas()


def test_schemas_dir_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SCHEMAS_DIR_ENV, str(tmp_path))
    assert schemas_dir() == tmp_path
    monkeypatch.setenv(SCHEMAS_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=SCHEMAS_DIR_ENV):
        schemas_dir()


def test_an_input_schema_must_dispatch_on_message_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    schema = load_schema("page-views.v1.json")
    schema["if"] = {"required": ["event_id"]}
    (tmp_path / "page-views.v1.json").write_text(json.dumps(schema), encoding="utf-8")
    monkeypatch.setenv(SCHEMAS_DIR_ENV, str(tmp_path))
    input_validators.cache_clear()
    try:
        with pytest.raises(ConfigError, match="dispatch on messageId"):
            input_validators(PAGE_VIEWS)
    finally:
        input_validators.cache_clear()


def test_a_broken_schema_file_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "page-views.v1.json").write_text("{not json", encoding="utf-8")
    monkeypatch.setenv(SCHEMAS_DIR_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_schema("page-views.v1.json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_schema("downloads.v1.json")


# --- custom track events, identity links and accounts ---------------------------------------


def test_a_custom_track_event_keeps_its_name_and_any_known_name_belongs_elsewhere() -> None:
    track = TopicKind.TRACK
    event = parse(segment(type="track", event="Form Submitted", userId="u-1"), track)
    assert (event.type, event.name, event.lead_id, event.anonymous) == (
        EventType.TRACK, "Form Submitted", "u-1", False,
    )  # fmt: skip
    anonymous = parse(segment(type="track", event="LinkedIn Post Liked"), track)
    assert anonymous.anonymous and anonymous.lead_id == "507f191e810c19729de860ea"
    # A name with a type of its own goes to that type's topic, not here.
    assert reject(segment(type="track", event="Demo Requested"), track).reason == "wrong_topic"
    # Elsewhere an unknown name is still unknown: only the track topic takes any name.
    assert reject(segment(type="track", event="Form Submitted"), PAGE_VIEWS).reason == (
        "unknown_type"
    )
    native_track = parse(native("track", event="Form Submitted"), track)
    assert (native_track.name, native_track.anonymous) == ("Form Submitted", False)


def test_alias_and_identify_with_both_ids_link_the_anonymous_id() -> None:
    profiles = TopicKind.PROFILES
    alias = parse(segment(type="alias", userId="u-1", previousId="anon-1"), profiles)
    assert (alias.type, alias.lead_id, alias.link) == (EventType.ALIAS, "u-1", "anon-1")
    # An SDK may send numbers for ids: they become strings.
    assert parse(segment(type="alias", userId="u-1", previousId=42), profiles).link == "42"
    # Aliasing an id to itself links nothing.
    assert parse(segment(type="alias", userId="u-1", previousId="u-1"), profiles).link is None
    identify = parse(segment(type="identify", userId="u-1", anonymousId="anon-1"), profiles)
    assert (identify.lead_id, identify.link, identify.anonymous) == ("u-1", "anon-1", False)
    # Without a userId the anonymous id is the lead and nothing is linked.
    alone = parse(segment(type="identify", traits={"title": "CTO"}), profiles)
    assert (alone.lead_id, alone.link, alone.anonymous) == ("507f191e810c19729de860ea", None, True)
    native_identify = parse(native("identify", anonymous_id="anon-2"), profiles)
    assert native_identify.link == "anon-2"


def test_a_group_call_links_its_account() -> None:
    profiles = TopicKind.PROFILES
    group = parse(segment(type="group", userId="u-1", groupId=1234, traits={"n": 1}), profiles)
    assert (group.type, group.link, dict(group.traits)) == (EventType.GROUP, "1234", {"n": 1})
    assert parse(native("group", group_id="acct-1"), profiles).link == "acct-1"
    assert reject(native("group"), profiles).reason == "schema"
    assert reject(segment(type="alias", userId="u-1"), profiles).reason == "schema"
