"""parse_event: bytes -> orjson -> the topic's JSON Schema -> native or Segment -> Event.

Checks run in this order, and the first failure names the reject reason (rejects.py):

1. size (`too_large`, before any decoding), `empty` (null value, 0 bytes or only whitespace);
2. decoding: `not_utf8`, `malformed_json`, `not_an_object`;
3. the topic's JSON Schema (`schema`), which also holds the lead id rules and the RFC 3339
   shape. When the schema rejects a message whose type, lead id or time field is itself wrong,
   the reason names that field instead (see rejects.py).
4. semantic checks on a schema-valid message (native.py, segment.py): type and topic (the
   schema's enums already agree), `bad_time` (the shape is right but it is no real instant,
   e.g. 2024-02-30), `time_out_of_range`, `too_many_properties`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastjsonschema
import orjson

from streamscore.errors import InvalidEvent
from streamscore.events.envelope import Event, Limits
from streamscore.events.native import from_native
from streamscore.events.rejects import decode_error, not_an_object, schema_rejection
from streamscore.events.schemas import input_check
from streamscore.events.segment import from_segment
from streamscore.events.types import TopicKind


def parse_event(raw: bytes | None, kind: TopicKind, now_ms: int, limits: Limits) -> Event:
    """Validate one Kafka message value from a `kind` topic; raises only InvalidEvent."""
    doc = load_object(raw, "message", limits)
    # "A message is Segment-shaped when it has messageId" (the schemas' top-level `if`).
    segment = "messageId" in doc
    if not input_check(kind).is_valid(doc):
        raise schema_rejection(doc, kind, segment)
    if segment:
        return from_segment(doc, kind, now_ms, limits)
    return from_native(doc, kind, now_ms, limits)


def load_object(raw: bytes | None, what: str, limits: Limits | None = None) -> dict[str, Any]:
    """A message value decoded to its JSON object, or InvalidEvent: checks 1 and 2 above.

    `what` names the message in the reasons' details; `too_large` applies when `limits` are
    given (the internal topics carry what the worker wrote, sized by it).
    """
    if raw is None:
        raise InvalidEvent("empty", f"{what} value is null (a tombstone)")
    size = len(raw)
    if limits is not None and size > limits.max_event_bytes:
        raise InvalidEvent("too_large", f"{size} bytes, limit {limits.max_event_bytes}")
    if not size:
        raise InvalidEvent("empty", f"{what} value is 0 bytes")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise decode_error(raw, exc) from None
    if type(doc) is not dict:
        raise not_an_object(doc)
    return doc


def load_record(raw: bytes | None, what: str, validate: Callable[[Any], Any]) -> dict[str, Any]:
    """An internal topic's record (identity, accounts) decoded and checked by its schema's
    fastjsonschema `validate`; InvalidEvent (`schema` among them) when it is not one."""
    doc = load_object(raw, what)
    try:
        validate(doc)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise InvalidEvent("schema", str(exc)) from None
    return doc
