"""Property tests: parse_event raises only InvalidEvent, and valid events round-trip."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastjsonschema import JsonSchemaValueException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamscore.errors import InvalidEvent
from streamscore.events import (
    REJECT_REASONS,
    SEGMENT_TRACK_ALIASES,
    TOPIC_BY_TYPE,
    Event,
    EventType,
    Limits,
    TopicKind,
    parse_event,
)
from streamscore.events.schemas import input_check, input_validators

NOW_MS = 1_714_564_800_123
LIMITS = Limits()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

kinds = st.sampled_from(list(TopicKind))
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
small_json = st.recursive(
    json_scalars, lambda children: st.lists(children, max_size=3), max_leaves=4
)
small_objects = st.dictionaries(st.text(max_size=10), small_json, max_size=5)
junk = small_json | small_objects
type_names = st.sampled_from(
    [t.value for t in EventType] + ["page", "track", "identify", "screen", "group", ""]
)
track_names = st.sampled_from([*SEGMENT_TRACK_ALIASES, "Order Completed", "email opened"])
ids = st.text(max_size=12) | st.sampled_from(["lead-1", " ", "a\x00b", "x" * 300])
times = (
    st.integers(min_value=NOW_MS - 10**12, max_value=NOW_MS + 10**9)
    | st.sampled_from(["2024-05-01T12:00:00Z", "2024-02-30T00:00:00Z", "2024-05-01", "now"])
    | st.floats(allow_nan=False, allow_infinity=False)
)
contexts = small_objects | st.fixed_dictionaries(
    {},
    optional={
        "userAgent": junk,
        "page": st.fixed_dictionaries({}, optional={"path": junk}) | junk,
        "traits": junk,
        "user_agent": junk,
    },
)
# Envelope-shaped dicts whose fields are sometimes right and sometimes anything: these reach
# the schema refinement and the Segment mapping, which plain random JSON rarely does.
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "event_id": ids | junk,
        "lead_id": ids | junk,
        "type": type_names | junk,
        "time": times | junk,
        "properties": junk,
        "context": contexts | junk,
        "traits": junk,
        "messageId": ids | junk,
        "userId": ids | junk,
        "anonymousId": ids | junk,
        "event": track_names | junk,
        "timestamp": times | junk,
        "originalTimestamp": times | junk,
    },
)


def _parse_or_reject(raw: bytes | None, kind: TopicKind) -> Event | InvalidEvent:
    try:
        return parse_event(raw, kind, NOW_MS, LIMITS)
    except InvalidEvent as exc:
        assert exc.reason in REJECT_REASONS
        assert isinstance(exc.detail, str)
        return exc


@FUZZ
@given(raw=st.binary(max_size=2048) | st.none(), kind=kinds)
def test_arbitrary_bytes_only_raise_invalid_event(raw: bytes | None, kind: TopicKind) -> None:
    _parse_or_reject(raw, kind)


@FUZZ
@given(value=json_values, kind=kinds)
def test_arbitrary_json_only_raises_invalid_event(value: Any, kind: TopicKind) -> None:
    _parse_or_reject(orjson.dumps(value), kind)


@FUZZ
@given(doc=envelopes, kind=kinds)
def test_envelope_shaped_json_only_raises_invalid_event(
    doc: dict[str, Any], kind: TopicKind
) -> None:
    result = _parse_or_reject(orjson.dumps(doc), kind)
    if isinstance(result, Event):
        assert TOPIC_BY_TYPE[EventType(result.type)] == kind
        assert NOW_MS - LIMITS.max_age_ms <= result.time_ms <= NOW_MS + LIMITS.max_future_skew_ms


def _explained_valid(doc: Any, kind: TopicKind) -> bool:
    native, segment = input_validators(kind)
    try:
        (segment if isinstance(doc, dict) and "messageId" in doc else native)(doc)
    except JsonSchemaValueException:
        return False
    return True


@FUZZ
@given(doc=envelopes | small_objects, kind=kinds)
def test_fast_check_and_explaining_validator_agree(doc: dict[str, Any], kind: TopicKind) -> None:
    # jsonschema-rs decides on the hot path and fastjsonschema explains a rejection: were they
    # to differ, a rejection would be explained by a validator that accepts the message.
    doc = orjson.loads(orjson.dumps(doc))  # as parse_event sees it
    assert input_check(kind).is_valid(doc) == _explained_valid(doc, kind)


# Python's str.isspace set and ECMA-262's \s (which adds U+FEFF and lacks U+0085): the schemas
# spell "not blank" out, so that every regex dialect reads it the same way.
WHITESPACE = sorted(
    {c for c in map(chr, range(0x3001)) if c.isspace()} | set("\t\n\v\f\r \u00a0\ufeff\u180e")
)


@pytest.mark.parametrize("char", WHITESPACE, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("kind", [TopicKind.PAGE_VIEWS, TopicKind.PROFILES])
def test_whitespace_lead_ids_are_judged_alike(char: str, kind: TopicKind) -> None:
    for lead_id in (char, f"{char}{char}", f"a{char}"):
        doc: dict[str, Any] = (
            {"event_id": "e1", "lead_id": lead_id, "type": "page_view", "time": NOW_MS}
            if kind is TopicKind.PAGE_VIEWS
            else {"messageId": "m1", "userId": lead_id, "type": "identify", "timestamp": NOW_MS}
        )
        valid = not lead_id.isspace() and not _CONTROL.search(lead_id)
        assert input_check(kind).is_valid(doc) == valid
        assert _explained_valid(doc, kind) == valid


# --- valid events -------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
valid_lead_ids = st.text(min_size=1, max_size=64).filter(
    lambda s: not s.isspace() and not _CONTROL.search(s)
)
valid_event_ids = st.text(min_size=1, max_size=128)
valid_times_ms = st.integers(
    min_value=NOW_MS - LIMITS.max_age_ms, max_value=NOW_MS + LIMITS.max_future_skew_ms
)
texts = st.text(max_size=30)


@st.composite
def rfc3339(draw: st.DrawFn, time_ms: int) -> tuple[str, int]:
    """An RFC 3339 rendering of time_ms in some offset, and the time_ms it parses back to."""
    offset_min = draw(st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59))
    local = EPOCH + timedelta(milliseconds=time_ms, minutes=offset_min)
    digits = draw(st.sampled_from([0, 1, 2, 3, 6, 9]))
    millis = time_ms % 1000
    kept = millis - millis % 10 ** max(0, 3 - digits)  # fewer than 3 digits drop precision
    extra = max(0, digits - 3)  # more than 3 are sub-millisecond, floored away
    fraction = f"{millis:03d}"[:digits] + draw(
        st.text(alphabet="0123456789", min_size=extra, max_size=extra)
    )
    sign = "-" if offset_min < 0 else "+"
    zone = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    if offset_min == 0 and draw(st.booleans()):
        zone = "Z"
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if digits else "") + zone
    return text, time_ms - millis + kept


@st.composite
def valid_times(draw: st.DrawFn) -> tuple[str | int, int]:
    time_ms = draw(valid_times_ms)
    if draw(st.booleans()):
        return time_ms, time_ms
    text, parsed_ms = draw(rfc3339(time_ms))
    if parsed_ms < NOW_MS - LIMITS.max_age_ms:
        return time_ms, time_ms
    return text, parsed_ms


@st.composite
def native_events(draw: st.DrawFn) -> tuple[dict[str, Any], TopicKind, dict[str, Any]]:
    event_type = draw(st.sampled_from(list(EventType)))
    time, time_ms = draw(valid_times())
    doc: dict[str, Any] = {
        "event_id": draw(valid_event_ids),
        "lead_id": draw(valid_lead_ids),
        "type": event_type.value,
        "time": time,
    }
    for field in ("properties", "context", "traits"):
        if draw(st.booleans()):
            doc[field] = draw(small_objects)
    # Keys the schema types are drawn with the right type.
    if "properties" in doc:
        doc["properties"].pop("path", None)
        doc["properties"].update(draw(st.fixed_dictionaries({}, optional={"path": texts})))
    if "context" in doc:
        doc["context"].pop("user_agent", None)
        doc["context"].pop("ip", None)
        doc["context"].update(
            draw(st.fixed_dictionaries({}, optional={"user_agent": texts, "ip": texts}))
        )
    name = link = None
    if event_type is EventType.TRACK:
        name = doc["event"] = draw(valid_event_names)
    link_field = NATIVE_LINK_FIELDS.get(event_type)
    if link_field is not None and (event_type is not EventType.IDENTIFY or draw(st.booleans())):
        doc[link_field] = draw(valid_lead_ids | st.just(doc["lead_id"]))
        if event_type is EventType.GROUP or doc[link_field] != doc["lead_id"]:
            link = doc[link_field]
    expected = {
        "event_id": doc["event_id"],
        "lead_id": doc["lead_id"],
        "type": event_type,
        "time_ms": time_ms,
        "properties": doc.get("properties", {}),
        "context": doc.get("context", {}),
        "traits": doc.get("traits", {}),
        "name": name,
        "link": link,
        "anonymous": False,
    }
    return doc, TOPIC_BY_TYPE[event_type], expected


NATIVE_LINK_FIELDS = {
    EventType.ALIAS: "previous_id",
    EventType.IDENTIFY: "anonymous_id",
    EventType.GROUP: "group_id",
}
valid_event_names = st.text(min_size=1, max_size=256) | st.sampled_from(
    ["Form Submitted", "LinkedIn Post Liked", "track"]
)


@st.composite
def segment_events(draw: st.DrawFn) -> tuple[dict[str, Any], TopicKind, dict[str, Any]]:
    call = draw(
        st.sampled_from(
            [
                ("page", None),
                ("identify", None),
                ("alias", None),
                ("group", None),
                ("track", CUSTOM),
                *(("track", n) for n in SEGMENT_TRACK_ALIASES),
            ]
        )
    )
    name = None
    if call[1] is CUSTOM:
        name = draw(valid_event_names.filter(lambda n: n not in SEGMENT_TRACK_ALIASES))
        event_type = EventType.TRACK
    elif call[1]:
        event_type = SEGMENT_TRACK_ALIASES[call[1]]
    else:
        event_type = SEGMENT_CALLS[call[0]]
    time, time_ms = draw(valid_times())
    doc: dict[str, Any] = {"messageId": draw(valid_event_ids), "type": call[0]}
    if call[1]:
        doc["event"] = name or call[1]
    doc["timestamp" if draw(st.booleans()) else "originalTimestamp"] = time
    user_id = draw(st.none() | valid_lead_ids)
    anonymous_id = draw(valid_lead_ids) if user_id is None else draw(st.none() | valid_lead_ids)
    for field, value in (("userId", user_id), ("anonymousId", anonymous_id)):
        if value is not None or draw(st.booleans()):
            doc[field] = value
    lead_id = user_id if user_id is not None else anonymous_id
    link: str | None = None
    if event_type is EventType.ALIAS:
        previous = doc["previousId"] = draw(valid_lead_ids | st.integers(0, 10**12))
        link = str(previous) if str(previous) != lead_id else None
    elif event_type is EventType.GROUP:
        link = str(doc.setdefault("groupId", draw(valid_lead_ids | st.integers(0, 10**12))))
    elif event_type is EventType.IDENTIFY and user_id is not None and anonymous_id is not None:
        link = anonymous_id if anonymous_id != user_id else None
    properties = draw(st.none() | small_objects)
    if properties is not None:
        properties.pop("path", None)
        properties.update(draw(st.fixed_dictionaries({}, optional={"path": texts})))
        doc["properties"] = properties
    traits = draw(st.none() | small_objects)
    if traits is not None:
        doc["traits"] = traits
    context: dict[str, Any] | None = draw(st.none() | small_objects)
    if context is not None:
        for key in ("userAgent", "ip", "page", "traits"):
            context.pop(key, None)
        page = st.fixed_dictionaries({}, optional={"path": texts}).map(
            lambda p: {**p, "url": "https://example.com/"}
        )
        context.update(
            draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "userAgent": texts,
                        "ip": texts,
                        "page": page,
                        "traits": small_objects,
                    },
                )
            )
        )
        doc["context"] = context

    context_out = dict(context or {})
    if "userAgent" in context_out:
        context_out["user_agent"] = context_out["userAgent"]
    traits_out = {**(context_out.get("traits") or {}), **(traits or {})}
    properties_out = dict(properties or {})
    page_path = (context_out.get("page") or {}).get("path")
    if event_type is EventType.PAGE_VIEW and page_path is not None:
        properties_out.setdefault("path", page_path)
    expected = {
        "event_id": doc["messageId"],
        "lead_id": lead_id,
        "type": event_type,
        "time_ms": time_ms,
        "properties": properties_out,
        "context": context_out,
        "traits": traits_out,
        "name": name,
        "link": link,
        "anonymous": user_id is None,
    }
    return doc, TOPIC_BY_TYPE[event_type], expected


CUSTOM = "<custom>"
SEGMENT_CALLS = {
    "page": EventType.PAGE_VIEW,
    "identify": EventType.IDENTIFY,
    "alias": EventType.ALIAS,
    "group": EventType.GROUP,
}


def _count(doc: dict[str, Any]) -> int:
    return sum(len(doc.get(field) or {}) for field in ("properties", "context", "traits"))


@FUZZ
@given(case=native_events() | segment_events())
def test_valid_events_parse_and_round_trip(
    case: tuple[dict[str, Any], TopicKind, dict[str, Any]],
) -> None:
    doc, kind, expected = case
    assert _count(doc) <= LIMITS.max_properties
    event = parse_event(orjson.dumps(doc), kind, NOW_MS, LIMITS)
    assert {
        "event_id": event.event_id,
        "lead_id": event.lead_id,
        "type": event.type,
        "time_ms": event.time_ms,
        "properties": dict(event.properties),
        "context": dict(event.context),
        "traits": dict(event.traits),
        "name": event.name,
        "link": event.link,
        "anonymous": event.anonymous,
    } == expected


@FUZZ
@given(lead_id=st.text(max_size=300) | st.sampled_from(["x" * 256, "x" * 257, " \t", "\u3000"]))
def test_schema_and_python_agree_on_lead_ids(lead_id: str) -> None:
    # The schema's lead_id rule and the Python rule that names `bad_lead_id` must agree.
    doc = {"event_id": "e1", "lead_id": lead_id, "type": "page_view", "time": NOW_MS}
    result = _parse_or_reject(orjson.dumps(doc), TopicKind.PAGE_VIEWS)
    valid = 0 < len(lead_id) <= 256 and not lead_id.isspace() and not _CONTROL.search(lead_id)
    if valid:
        assert isinstance(result, Event)
        assert result.lead_id == lead_id
    else:
        assert isinstance(result, InvalidEvent)
        assert result.reason == "bad_lead_id"


FIELDS = [
    "event_id",
    "lead_id",
    "type",
    "time",
    "properties",
    "context",
    "traits",
    "messageId",
    "userId",
    "anonymousId",
    "event",
    "timestamp",
    "originalTimestamp",
    "previousId",
    "groupId",
    "previous_id",
    "anonymous_id",
    "group_id",
]


@st.composite
def mutated_events(draw: st.DrawFn) -> tuple[dict[str, Any], TopicKind]:
    """A valid event with one field deleted or replaced, and maybe sent to another topic."""
    doc, kind, _ = draw(native_events() | segment_events())
    field = draw(st.sampled_from(FIELDS))
    if draw(st.booleans()):
        doc.pop(field, None)
    else:
        doc[field] = draw(junk | ids | times | type_names | track_names)
    return doc, draw(st.just(kind) | kinds)


@FUZZ
@given(case=mutated_events())
def test_mutated_valid_events_only_raise_invalid_event(
    case: tuple[dict[str, Any], TopicKind],
) -> None:
    doc, kind = case
    _parse_or_reject(orjson.dumps(doc), kind)
