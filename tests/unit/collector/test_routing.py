"""Segment messages -> records: routing, keys, enrichment, time correction, and refusals."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamscore.collector.errors import REASONS, STATUS, Rejected
from streamscore.collector.routing import (
    MESSAGE_TYPES,
    Endpoint,
    Record,
    message_id,
    parse_time_ms,
    records_of,
    topic_kind,
    topic_kinds_of,
)
from streamscore.events import Limits, format_time_ms, parse_event
from streamscore.events.schemas import input_check
from streamscore.events.types import SEGMENT_TRACK_ALIASES, TOPIC_BY_TYPE, TopicKind

NOW_MS = 1_714_564_800_123  # 2024-05-01T12:00:00.123Z
MAX = 32 * 1024


def sdk_message(message_type: str = "track", **fields: Any) -> dict[str, Any]:
    """A message as segment-analytics-python 2.x enqueues it."""
    doc: dict[str, Any] = {
        "integrations": {},
        "type": message_type,
        "userId": "lead-1",
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
        "timestamp": format_time_ms(NOW_MS - 5_000),
        "messageId": "5a4c2bfe-9b6e-4d1c-8f3e-2c1b0a9d8e7f",
    }
    if message_type == "track":
        doc["event"] = "Form Submitted"
        doc["properties"] = {"form": "contact-sales"}
    if message_type == "alias":
        doc["previousId"] = "anon-1"
    if message_type == "group":
        doc["groupId"] = "acme"
    doc.update(fields)
    return doc


def one(message: dict[str, Any], endpoint: Endpoint = "batch", **batch: Any) -> Record:
    if endpoint == "batch":
        (record,) = records_of({"batch": [message], **batch}, "batch", NOW_MS, MAX)
    else:
        (record,) = records_of(message, endpoint, NOW_MS, MAX)
    return record


def value(record: Record) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(record.value)
    return doc


def rejected(body: dict[str, Any], endpoint: Endpoint = "batch") -> Rejected:
    with pytest.raises(Rejected) as caught:
        records_of(body, endpoint, NOW_MS, MAX)
    return caught.value


# ------------------------------------------------------------------------------ routing


@pytest.mark.parametrize("name", sorted(SEGMENT_TRACK_ALIASES))
def test_known_track_names_go_to_their_types_topic(name: str) -> None:
    assert topic_kind("track", name) is TOPIC_BY_TYPE[SEGMENT_TRACK_ALIASES[name]]
    assert one(sdk_message(event=name)).topic_kind is TOPIC_BY_TYPE[SEGMENT_TRACK_ALIASES[name]]


@pytest.mark.parametrize(
    "name", ["Form Submitted", "LinkedIn Post Liked", "email opened", "Demo requested"]
)
def test_other_track_names_go_to_the_custom_track_topic(name: str) -> None:
    assert one(sdk_message(event=name)).topic_kind is TopicKind.TRACK


@pytest.mark.parametrize(
    ("message_type", "kind"),
    [
        ("page", TopicKind.PAGE_VIEWS),
        ("screen", TopicKind.PAGE_VIEWS),
        ("identify", TopicKind.PROFILES),
        ("alias", TopicKind.PROFILES),
        ("group", TopicKind.PROFILES),
    ],
)
def test_other_types_route_by_type(message_type: str, kind: TopicKind) -> None:
    record = one(sdk_message(message_type))
    assert (record.type, record.topic_kind) == (message_type, kind)


@pytest.mark.parametrize(
    ("ids", "key"),
    [
        ({"userId": "u1", "anonymousId": "a1"}, b"u1"),
        ({"userId": None, "anonymousId": "a1"}, b"a1"),
        ({"anonymousId": "a1"}, b"a1"),
        ({"userId": 42}, b"42"),
        ({"userId": "Zoë 李 {g0}:*"}, "Zoë 李 {g0}:*".encode()),
    ],
)
def test_key_is_user_id_else_anonymous_id(ids: dict[str, Any], key: bytes) -> None:
    message = {k: v for k, v in sdk_message().items() if k != "userId"}
    record = one({**message, **ids})
    assert record.key == key
    sent = value(record)
    assert all(isinstance(sent[f], str) for f in ("userId", "anonymousId") if sent.get(f))


def test_single_call_endpoints_take_the_type_from_the_path() -> None:
    message = sdk_message("identify", traits={"email": "a@b.co"})
    del message["type"]
    record = one(message, "identify")
    assert (record.type, value(record)["type"]) == ("identify", "identify")
    # The path wins over a contradicting body, as on Segment's single-call endpoints.
    assert one(sdk_message("track"), "page").topic_kind is TopicKind.PAGE_VIEWS


# ------------------------------------------------------------------------------ enrichment


def test_message_is_forwarded_as_sent_plus_segment_fields() -> None:
    message = sdk_message(writeKey="secret-key")
    sent = value(one(copy.deepcopy(message), writeKey="secret-key"))
    assert "writeKey" not in sent  # a secret is never forwarded
    assert sent["receivedAt"] == format_time_ms(NOW_MS)
    for field in ("integrations", "type", "userId", "context", "messageId", "event", "properties"):
        assert sent[field] == message[field]


def test_message_id_is_assigned_when_missing() -> None:
    message = sdk_message()
    del message["messageId"]
    first = value(one(copy.deepcopy(message), sentAt=format_time_ms(NOW_MS - 10)))
    retry = value(one(copy.deepcopy(message), sentAt=format_time_ms(NOW_MS - 1)))
    assert first["messageId"].startswith("ss-")
    assert first["messageId"] == retry["messageId"]  # a retry keeps its id: the worker dedups it
    other = value(one({**copy.deepcopy(message), "event": "Form Viewed"}))
    assert other["messageId"] != first["messageId"]


def test_untimed_messages_get_distinct_ids_and_the_receive_time() -> None:
    message = {"type": "track", "event": "Clicked", "userId": "u1"}
    first, second = (value(one(dict(message))) for _ in range(2))
    assert first["messageId"] != second["messageId"]
    assert first["timestamp"] == format_time_ms(NOW_MS)
    assert message_id(message) != message_id(message)


def test_numeric_message_ids_become_strings() -> None:
    assert value(one(sdk_message(messageId=17)))["messageId"] == "17"


ms = st.integers(0, 4_102_444_800_000)  # 1970 .. 2100


@given(
    client_ms=ms,
    sent_ms=ms,
    batch_level=st.booleans(),
    field=st.sampled_from(["timestamp", "originalTimestamp"]),
)
def test_clock_skew_correction_keeps_the_age_the_client_saw(
    client_ms: int, sent_ms: int, batch_level: bool, field: str
) -> None:  # fmt: skip
    message = sdk_message()
    del message["timestamp"]
    message[field] = format_time_ms(client_ms)
    sent_at = format_time_ms(sent_ms)
    if batch_level:
        sent = value(one(message, sentAt=sent_at))
    else:
        sent = value(one({**message, "sentAt": sent_at}))
    corrected = client_ms + NOW_MS - sent_ms
    if 0 <= corrected <= 253402300799999:
        # timestamp = receivedAt - (sentAt - originalTimestamp), to the millisecond
        assert parse_time_ms(sent["timestamp"]) == corrected
        assert sent["originalTimestamp"] == format_time_ms(client_ms)
    else:
        assert sent[field] == format_time_ms(client_ms)
    assert sent["sentAt"] == sent_at


def test_time_is_left_alone_without_a_usable_sent_at() -> None:
    message = sdk_message(timestamp="2024-05-01T11:00:00.5+02:00")
    assert value(one(copy.deepcopy(message)))["timestamp"] == message["timestamp"]
    for sent_at in ("yesterday", 1714564800123, "2024-05-01T12:00:00"):  # no zone: ambiguous
        sent = value(one(copy.deepcopy(message), sentAt=sent_at))
        assert sent["timestamp"] == message["timestamp"] and "originalTimestamp" not in sent


def test_analytics_js_time_shape_is_corrected() -> None:
    # analytics.js sends timestamp and sentAt per message; a clock 10 minutes fast is undone.
    fast_ms = 600_000
    message = sdk_message(
        timestamp=format_time_ms(NOW_MS + fast_ms - 300), sentAt=format_time_ms(NOW_MS + fast_ms)
    )
    sent = value(one(message, "track"))
    assert parse_time_ms(sent["timestamp"]) == NOW_MS - 300


# ------------------------------------------------------------------------------ the worker reads it


@pytest.mark.parametrize(
    "message",
    [
        sdk_message("page", context={"page": {"path": "/pricing"}}),
        sdk_message("identify", traits={"title": "VP Sales"}),
        sdk_message("identify", userId="u-1", anonymousId="anon-1"),
        sdk_message("alias", userId="u-1", previousId="anon-1"),
        sdk_message("group", userId="u-1", groupId=42, traits={"name": "Acme"}),
        sdk_message(event="LinkedIn Post Liked"),
        *(sdk_message(event=name) for name in sorted(SEGMENT_TRACK_ALIASES)),
    ],
    ids=lambda m: m.get("event", m["type"]),
)
def test_the_worker_parses_what_the_collector_routes(message: dict[str, Any]) -> None:
    record = one(message, sentAt=format_time_ms(NOW_MS - 20))
    event = parse_event(record.value, record.topic_kind, NOW_MS, Limits())
    assert event.lead_id == record.key.decode() and event.event_id == message["messageId"]


def test_custom_track_records_match_the_track_schema_and_keep_their_name() -> None:
    record = one(sdk_message(event="LinkedIn Post Liked"))
    assert record.topic_kind is TopicKind.TRACK
    assert input_check(TopicKind.TRACK).is_valid(orjson.loads(record.value))
    event = parse_event(record.value, TopicKind.TRACK, NOW_MS, Limits())
    assert (event.type, event.name) == ("track", "LinkedIn Post Liked")


# ------------------------------------------------------------------------------ refusals


REFUSALS: list[tuple[str, dict[str, Any], Endpoint]] = [
    ("bad_batch", {"batch": {"type": "track"}}, "batch"),
    ("bad_batch", {}, "batch"),
    ("bad_batch", {"batch": [sdk_message(), "track"]}, "batch"),
    ("bad_type", {"batch": [sdk_message("purchase")]}, "batch"),
    ("bad_type", {"batch": [{k: v for k, v in sdk_message().items() if k != "type"}]}, "batch"),
    ("missing_field", {"batch": [sdk_message(event="")]}, "batch"),
    ("missing_field", {"batch": [sdk_message(event="  ")]}, "batch"),
    ("missing_field", {"batch": [sdk_message(event=7)]}, "batch"),
    ("missing_field", {k: v for k, v in sdk_message().items() if k != "event"}, "track"),
    ("missing_field", sdk_message("alias", previousId=None), "alias"),
    ("missing_field", sdk_message("group", groupId=" "), "group"),
    ("missing_lead_id", {"batch": [sdk_message(userId=None)]}, "batch"),
    ("missing_lead_id", sdk_message("page", userId=None, anonymousId=None), "page"),
    ("bad_lead_id", {"batch": [sdk_message(userId="")]}, "batch"),
    ("bad_lead_id", {"batch": [sdk_message(userId="   ", anonymousId="a1")]}, "batch"),
    ("bad_lead_id", {"batch": [sdk_message(userId="x" * 257)]}, "batch"),
    ("bad_lead_id", {"batch": [sdk_message(userId="tab\there")]}, "batch"),
    ("bad_lead_id", {"batch": [sdk_message(anonymousId=["a"])]}, "batch"),
    ("bad_lead_id", {"batch": [sdk_message(userId=True)]}, "batch"),
    ("message_too_large", {"batch": [sdk_message(properties={"x": "y" * MAX})]}, "batch"),
]


@pytest.mark.parametrize(("reason", "body", "endpoint"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_name_the_reason(reason: str, body: dict[str, Any], endpoint: Endpoint) -> None:
    refusal = rejected(copy.deepcopy(body), endpoint)
    assert refusal.reason == reason and refusal.status == 400


def test_one_bad_message_refuses_the_whole_batch_and_names_it() -> None:
    refusal = rejected({"batch": [sdk_message(), sdk_message(), sdk_message(userId=None)]})
    assert refusal.detail.startswith("batch[2]:")


def test_message_limit_is_inclusive() -> None:
    message = sdk_message(properties={"x": ""})
    message["properties"]["x"] = "y" * (MAX - len(orjson.dumps(message)))
    assert len(orjson.dumps(message)) == MAX
    one(message)
    message["properties"]["x"] += "y"
    assert rejected({"batch": [message]}).reason == "message_too_large"


def test_every_reason_has_an_sdk_meaningful_status() -> None:
    assert set(STATUS) == set(REASONS)
    retried = {reason for reason in REASONS if STATUS[reason] in (429, 503)}
    assert retried == {"overloaded", "broker_unavailable"}


def test_topic_kinds_of_lists_where_each_type_can_go() -> None:
    seen = {(t, one(sdk_message(t)).topic_kind) for t in MESSAGE_TYPES}
    seen |= {("track", topic_kind("track", name)) for name in SEGMENT_TRACK_ALIASES}
    listed = {(t, kind) for t in MESSAGE_TYPES for kind in topic_kinds_of(t)}
    assert seen == listed


def test_message_types_are_segments() -> None:
    assert set(MESSAGE_TYPES) == {"track", "page", "screen", "identify", "alias", "group"}
