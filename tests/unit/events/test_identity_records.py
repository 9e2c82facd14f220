"""Identity records (events/identity.py): what the builders write, parse_identity reads back."""

from __future__ import annotations

import orjson
import pytest

from streamscore.errors import InvalidEvent
from streamscore.events.envelope import Event
from streamscore.events.identity import (
    absorb_message,
    forward_message,
    merge_into_message,
    parse_identity,
)
from streamscore.events.schemas import compile_schema

T = 1_760_000_000_123


def test_merge_into_round_trips_keyed_by_the_id_to_merge() -> None:
    key, value = merge_into_message("anon-1", "user-1", "alias-9", T)
    compile_schema("identity.v1.json")(orjson.loads(value))
    record = parse_identity(value)
    assert key == b"anon-1"
    assert (record.lead_id, record.type, record.time_ms, record.other, record.event_id) == (
        "anon-1", "merge_into", T, "user-1", "alias-9",
    )  # fmt: skip


def test_absorb_carries_the_state_bytes_exactly() -> None:
    state = bytes(range(256))
    key, value = absorb_message("user-1", "anon-1", "alias-9", T, state)
    record = parse_identity(value)
    assert key == b"user-1" and record.type == "absorb" and record.state == state
    assert record.other == "anon-1" and record.record_id == "absorb:anon-1"


def test_a_forwarded_event_is_the_same_event_on_the_target_lead() -> None:
    event = Event(
        "e-1", "anon-1", "track", T, {"form": "contact-sales", "n": [1, 2.5]},
        {"user_agent": "x"}, {"title": "VP"}, "Form Submitted", None, True,
    )  # fmt: skip
    key, value = forward_message("user-1", "anon-1", event)
    record = parse_identity(value)
    assert key == b"user-1" and record.type == "event" and record.other == "anon-1"
    assert record.event == event._replace(lead_id="user-1")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"{", "malformed_json"),
        (b"[]", "not_an_object"),
        (b'{"schema": "streamscore.identity.v1", "op": "absorb"}', "schema"),
    ],
)
def test_what_is_not_an_identity_record_is_rejected(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_identity(raw)
    assert caught.value.reason == reason
