"""Why a message is rejected: the closed set of reasons, and the InvalidEvent for each case.

A schema rejection is refined when the type, lead id or time field is itself wrong, checked in
this order: `unknown_type` / `wrong_topic`, `bad_lead_id`, `bad_time`. A misrouted or untyped
message is the root cause whatever else is wrong with it, and these codes are what a dashboard
needs; otherwise the reason is `schema`, with the schema's own words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Literal, get_args

import orjson
from fastjsonschema import JsonSchemaValueException

from streamscore.errors import InvalidEvent
from streamscore.events.envelope import MAX_LEAD_ID_CHARS
from streamscore.events.schemas import input_check, input_validators
from streamscore.events.timefmt import RFC3339_PATTERN
from streamscore.events.types import (
    TOPIC_BY_TYPE,
    EventType,
    TopicKind,
    native_type,
    segment_type,
)

RejectReason = Literal[
    "too_large",
    "empty",
    "not_utf8",
    "malformed_json",
    "not_an_object",
    "schema",
    "unknown_type",
    "wrong_topic",
    "bad_time",
    "time_out_of_range",
    "too_many_properties",
    "bad_lead_id",
    "bad_amount",  # outcomes only (streamscore.outcomes.events)
    "unknown_event",  # a custom track event no rule names, with track_unknown = dead_letter
    "merge_refused",  # an identity merge the anonymous id's owner refused (scoring/identity.py)
]
REJECT_REASONS: Final[tuple[RejectReason, ...]] = get_args(RejectReason)

_RFC3339 = re.compile(RFC3339_PATTERN.removesuffix("$") + r"\Z")
_CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f]")
_DETAIL_VALUE_CHARS = 64


def decode_error(raw: bytes, exc: orjson.JSONDecodeError) -> InvalidEvent:
    """`not_utf8`, `empty` (only whitespace) or `malformed_json` for bytes orjson refused."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as decode_exc:
        return InvalidEvent("not_utf8", str(decode_exc))
    if not text.strip():
        return InvalidEvent("empty", "message value is only whitespace")
    return InvalidEvent("malformed_json", str(exc))


def not_an_object(doc: object) -> InvalidEvent:
    """`not_an_object` for a JSON value that is not an object."""
    return InvalidEvent("not_an_object", f"top level is a JSON {json_kind(doc)}, not an object")


def type_error(
    event_type: EventType | None, doc: Mapping[str, Any], segment: bool, kind: TopicKind
) -> InvalidEvent:
    """`wrong_topic` for a known type on another kind's topic, else `unknown_type`."""
    if event_type is not None:
        return InvalidEvent(
            "wrong_topic",
            f"{event_type.value} belongs on the {TOPIC_BY_TYPE[event_type]} topic, not {kind}",
        )
    if segment and doc.get("type") == "track":
        named = f"Segment track event {_shown(doc.get('event'))}"
    elif segment:
        named = f"Segment type {_shown(doc.get('type'))}"
    else:
        named = f"type {_shown(doc.get('type'))}"
    return InvalidEvent("unknown_type", f"{named} is not an event type")


def schema_rejection(doc: dict[str, Any], kind: TopicKind, segment: bool) -> InvalidEvent:
    """Why the schema rejected `doc`: a refined reason, else the schema's own words."""
    _refine_schema_error(doc, kind, segment)
    native_validator, segment_validator = input_validators(kind)
    try:
        (segment_validator if segment else native_validator)(doc)
    except JsonSchemaValueException as exc:
        return InvalidEvent("schema", _schema_detail(doc, segment, exc.message))
    # fastjsonschema accepts what jsonschema-rs rejected: the schema file read as is decides.
    first = next(iter(input_check(kind).iter_errors(doc)), None)
    message = first.message if first is not None else "data does not match the schema"
    return InvalidEvent("schema", _schema_detail(doc, segment, message))


def _refine_schema_error(doc: dict[str, Any], kind: TopicKind, segment: bool) -> None:
    """Raise a more specific InvalidEvent when the type, lead id or time field is the problem."""
    if _type_fields_are_strings(doc, segment):
        event_type = segment_type(doc, kind) if segment else native_type(doc["type"])
        if event_type is None or TOPIC_BY_TYPE[event_type] != kind:
            raise type_error(event_type, doc, segment, kind)
    lead_fields = ("userId", "anonymousId") if segment else ("lead_id",)
    for field in lead_fields:
        value = doc.get(field)
        if isinstance(value, str):
            check_lead_id(value, field)
    time_fields = ("timestamp", "originalTimestamp") if segment else ("time",)
    for field in time_fields:
        value = doc.get(field)
        if isinstance(value, str) and not _RFC3339.match(value):
            raise InvalidEvent(
                "bad_time", f"{field} is not an RFC 3339 date-time with a timezone offset"
            )
        if isinstance(value, float) and not value.is_integer():
            raise InvalidEvent("bad_time", f"{field} is not a whole number of epoch milliseconds")


def _type_fields_are_strings(doc: Mapping[str, Any], segment: bool) -> bool:
    if not isinstance(doc.get("type"), str):
        return False
    return not segment or doc["type"] != "track" or isinstance(doc.get("event"), str)


def check_lead_id(lead_id: str, field: str) -> None:
    """`bad_lead_id` for an id too long, blank, or holding a control character."""
    if len(lead_id) > MAX_LEAD_ID_CHARS:
        raise InvalidEvent(
            "bad_lead_id", f"{field} has {len(lead_id)} characters, max {MAX_LEAD_ID_CHARS}"
        )
    if not lead_id or lead_id.isspace():
        raise InvalidEvent("bad_lead_id", f"{field} is empty or only whitespace")
    control = _CONTROL_CHAR.search(lead_id)
    if control:
        raise InvalidEvent(
            "bad_lead_id",
            f"{field} contains control character U+{ord(control.group()):04X} "
            f"at index {control.start()}",
        )


def _schema_detail(doc: dict[str, Any], segment: bool, message: str) -> str:
    # fastjsonschema reports a failed anyOf as "data cannot be validated by any definition";
    # name the two Segment disjunctions instead.
    if segment:
        if not isinstance(doc.get("userId"), str) and not isinstance(doc.get("anonymousId"), str):
            return "data must contain a userId or anonymousId string"
        if "timestamp" not in doc and "originalTimestamp" not in doc:
            return "data must contain timestamp or originalTimestamp"
    return message


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL_VALUE_CHARS else text[: _DETAIL_VALUE_CHARS - 3] + "..."


def json_kind(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "null" if value is None else "number"
