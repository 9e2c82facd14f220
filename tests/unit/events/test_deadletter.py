"""dead_letter_record: what a rejected message looks like on the dead-letter topic."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from streamscore.errors import InvalidEvent
from streamscore.events import (
    REJECT_REASONS,
    Limits,
    TopicKind,
    compile_schema,
    dead_letter_record,
    parse_event,
)
from streamscore.events.deadletter import dead_letter_id

RECEIVED_MS = 1_714_564_800_456
TOPIC = "ss.v1.page-views"


def record(raw: bytes | None, reason: str = "schema", detail: str = "x") -> dict[str, Any]:
    encoded = dead_letter_record(raw, reason, detail, TOPIC, 3, 1_048_576, RECEIVED_MS)
    compile_schema("dead-letter.v1.json")(orjson.loads(encoded))
    decoded: dict[str, Any] = orjson.loads(encoded)
    return decoded


def test_record_fields() -> None:
    raw = b'{"lead_id": 42}'
    assert record(raw, "schema", "data.lead_id must be string") == {
        "dead_letter_id": dead_letter_id(TOPIC, 3, 1_048_576),
        "reason": "schema",
        "detail": "data.lead_id must be string",
        "source_topic": TOPIC,
        "partition": 3,
        "offset": 1_048_576,
        "received_at": "2024-05-01T12:00:00.456Z",
        "original_base64": "eyJsZWFkX2lkIjogNDJ9",
        "original_text": '{"lead_id": 42}',
        "original_size": len(raw),
        "original_truncated": False,
        "schema": "streamscore.dead_letter.v1",
    }


def test_the_id_names_the_source_record_and_nothing_else() -> None:
    ids = {dead_letter_id(t, p, o) for t in ("a", "b") for p in (0, 1) for o in (0, 1)}
    assert len(ids) == 8
    first = orjson.loads(dead_letter_record(b"{", "malformed_json", "x", "a", 0, 7, 1))
    again = orjson.loads(dead_letter_record(b"{", "malformed_json", "y", "a", 0, 7, 2))
    assert first["dead_letter_id"] == again["dead_letter_id"] == dead_letter_id("a", 0, 7)


@pytest.mark.parametrize("size", [900_000, 1_300_000, 4 * 1024 * 1024])
def test_a_record_never_exceeds_its_limit_and_says_when_it_was_cut(size: int) -> None:
    raw = ("{" + '"k": "é", ' * (size // 12))[:size].encode()
    limit = 1_000_000
    encoded = dead_letter_record(raw, "too_large", "d" * 5000, TOPIC, 1, 2, RECEIVED_MS, limit)
    assert len(encoded) <= limit
    dead: dict[str, Any] = orjson.loads(encoded)
    compile_schema("dead-letter.v1.json")(dead)
    kept = base64.b64decode(dead["original_base64"])
    assert dead["original_size"] == len(raw)
    assert dead["original_truncated"] is (len(kept) < len(raw))
    assert raw.startswith(kept)
    assert dead["original_truncated"] is (size > 700_000)


def test_tombstone_and_empty_value() -> None:
    tombstone = record(None, "empty")
    assert tombstone["original_base64"] == "" and tombstone["original_text"] is None
    empty = record(b"", "empty")
    assert empty["original_base64"] == "" and empty["original_text"] == ""


def test_not_utf8_has_no_text_but_keeps_the_bytes() -> None:
    raw = '{"lead_id": "Zoë"}'.encode("latin-1")
    dead = record(raw, "not_utf8")
    assert dead["original_text"] is None
    assert base64.b64decode(dead["original_base64"]) == raw


def test_large_value_text_is_truncated_bytes_are_not() -> None:
    raw = ("é" * 10_000).encode()
    dead = record(raw, "too_large", "d" * 5000)
    assert dead["original_text"] == "é" * 4096
    assert base64.b64decode(dead["original_base64"]) == raw
    assert len(dead["detail"]) == 1024


def test_unknown_reason_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not one of"):
        dead_letter_record(b"{}", "oops", "", TOPIC, 0, 0, RECEIVED_MS)


@pytest.mark.parametrize(
    "raw", [None, b"", b"\xff\xfe", b"[1]", b'{"type": "page_view"}', b"{", b"x" * 70_000]
)
def test_every_rejected_message_makes_a_valid_record(raw: bytes | None) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, TopicKind.PAGE_VIEWS, RECEIVED_MS, Limits())
    assert info.value.reason in REJECT_REASONS
    dead = record(raw, info.value.reason, info.value.detail)
    assert dead["reason"] == info.value.reason
