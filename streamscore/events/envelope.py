"""The typed input event and parse_event: bytes -> orjson -> schema -> semantic checks -> Event.

Checks run in this order, and the first failure names the reject reason:

1. size (`too_large`, before any decoding), `empty` (null value, 0 bytes or only whitespace);
2. decoding: `not_utf8`, `malformed_json`, `not_an_object`;
3. the topic's JSON Schema (`schema`), which also holds the lead id rules and the RFC 3339
   shape. When the schema rejects a message whose type, lead id or time field is itself wrong,
   the reason names that field instead, checked in this order: `unknown_type` / `wrong_topic`,
   `bad_lead_id`, `bad_time`. A misrouted or untyped message is the root cause whatever else is
   wrong with it, and these codes are what a dashboard needs.
4. semantic checks on a schema-valid message: type and topic (the schema's enums already agree),
   `bad_time` (the shape is right but it is no real instant, e.g. 2024-02-30),
   `time_out_of_range`, `too_many_properties`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, get_args

import orjson
from fastjsonschema import JsonSchemaValueException

from streamscore.errors import InvalidEvent
from streamscore.events.schemas import input_check, input_validators
from streamscore.events.types import (
    SEGMENT_TRACK_ALIASES,
    SEGMENT_TYPE_ALIASES,
    TOPIC_BY_TYPE,
    EventType,
    TopicKind,
)

if TYPE_CHECKING:
    from streamscore.config import Settings

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
]
REJECT_REASONS: Final[tuple[RejectReason, ...]] = get_args(RejectReason)

MAX_LEAD_ID_CHARS: Final = 256

# Same shape as `$defs.time.pattern` in schemas/*.v1.json (a test keeps them equal); only used
# to name `bad_time` when the schema has already rejected a message.
RFC3339_PATTERN: Final = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_RFC3339 = re.compile(RFC3339_PATTERN.removesuffix("$") + r"\Z")
_CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_EMPTY: Mapping[str, Any] = MappingProxyType({})
# Plain dict copies of the public read-only tables: a MappingProxyType lookup costs more.
_TYPE_BY_NAME: dict[str, EventType] = {t.value: t for t in EventType}
_TOPIC_BY_TYPE: dict[EventType, TopicKind] = dict(TOPIC_BY_TYPE)
_TRACK_ALIASES: dict[str, EventType] = dict(SEGMENT_TRACK_ALIASES)
_TYPE_ALIASES: dict[str, EventType] = dict(SEGMENT_TYPE_ALIASES)
_DETAIL_VALUE_CHARS = 64


class Event(NamedTuple):
    """One validated input event; `type` is an EventType member, `time_ms` epoch milliseconds."""

    event_id: str
    lead_id: str
    type: str
    time_ms: int
    properties: Mapping[str, Any]
    context: Mapping[str, Any]
    traits: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds beyond which parse_event rejects a message."""

    max_event_bytes: int = 65536
    max_properties: int = 200
    max_future_skew_ms: int = 300_000
    max_age_ms: int = 400 * 86400_000

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits configured in Settings (which holds them in seconds)."""
        return cls(
            max_event_bytes=settings.max_event_bytes,
            max_properties=settings.max_properties,
            max_future_skew_ms=settings.max_future_skew_s * 1000,
            max_age_ms=settings.max_event_age_s * 1000,
        )


def parse_event(raw: bytes | None, kind: TopicKind, now_ms: int, limits: Limits) -> Event:
    """Validate one Kafka message value from a `kind` topic; raises only InvalidEvent."""
    if raw is None:
        raise InvalidEvent("empty", "message value is null (a tombstone)")
    size = len(raw)
    if size > limits.max_event_bytes:
        raise InvalidEvent("too_large", f"{size} bytes, limit {limits.max_event_bytes}")
    if not size:
        raise InvalidEvent("empty", "message value is 0 bytes")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _decode_error(raw, exc) from None
    if type(doc) is not dict:
        raise InvalidEvent("not_an_object", f"top level is a JSON {_json_kind(doc)}, not an object")
    # "A message is Segment-shaped when it has messageId" (the schemas' top-level `if`).
    segment = "messageId" in doc
    if not input_check(kind).is_valid(doc):
        raise _schema_rejection(doc, kind, segment)
    if segment:
        return _from_segment(doc, kind, now_ms, limits)
    return _from_native(doc, kind, now_ms, limits)


def format_time_ms(time_ms: int) -> str:
    """Epoch milliseconds as RFC 3339 in UTC with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    return (_EPOCH + timedelta(milliseconds=time_ms)).isoformat(timespec="milliseconds")[:-6] + "Z"


def _from_native(doc: dict[str, Any], kind: TopicKind, now_ms: int, limits: Limits) -> Event:
    # The schema has checked every field's shape, including the lead id rules.
    event_type = _TYPE_BY_NAME.get(doc["type"])
    if event_type is None or _TOPIC_BY_TYPE[event_type] != kind:
        raise _type_error(event_type, doc, False, kind)
    time_ms = _time_ms(doc["time"], "time", now_ms, limits)
    properties = doc.get("properties", _EMPTY)
    context = doc.get("context", _EMPTY)
    traits = doc.get("traits", _EMPTY)
    _check_counts(properties, context, traits, limits)
    return Event(doc["event_id"], doc["lead_id"], event_type, time_ms, properties, context, traits)


def _from_segment(doc: dict[str, Any], kind: TopicKind, now_ms: int, limits: Limits) -> Event:
    event_type = _segment_type(doc)
    if event_type is None or _TOPIC_BY_TYPE[event_type] != kind:
        raise _type_error(event_type, doc, True, kind)
    # The schema allows userId null or absent only when anonymousId is a (valid) string.
    lead_id = doc.get("userId") or doc["anonymousId"]
    field = "timestamp" if "timestamp" in doc else "originalTimestamp"
    time_ms = _time_ms(doc[field], field, now_ms, limits)
    properties = doc.get("properties", _EMPTY)
    context = doc.get("context", _EMPTY)
    traits = doc.get("traits", _EMPTY)
    # Counted as sent, before the mapping below adds keys.
    _check_counts(properties, context, traits, limits)
    if context:
        # The dicts are fresh from orjson and owned by this call, so context is updated in place.
        context_traits = context.get("traits")
        if context_traits:
            traits = {**context_traits, **traits}  # explicit traits win
        user_agent = context.get("userAgent")
        if user_agent is not None:
            context["user_agent"] = user_agent
        if event_type is EventType.PAGE_VIEW:
            page = context.get("page")
            path = page.get("path") if page else None
            if path is not None and "path" not in properties:
                properties = {**properties, "path": path}
    return Event(doc["messageId"], lead_id, event_type, time_ms, properties, context, traits)


def _segment_type(doc: Mapping[str, Any]) -> EventType | None:
    """Our type for a Segment message (None if unknown or not strings): `type`, or track `event`."""
    segment_type = doc.get("type")
    if segment_type == "track":
        name = doc.get("event")
        return _TRACK_ALIASES.get(name) if isinstance(name, str) else None
    return _TYPE_ALIASES.get(segment_type) if isinstance(segment_type, str) else None


def _type_fields_are_strings(doc: Mapping[str, Any], segment: bool) -> bool:
    if not isinstance(doc.get("type"), str):
        return False
    return not segment or doc["type"] != "track" or isinstance(doc.get("event"), str)


def _type_error(
    event_type: EventType | None, doc: Mapping[str, Any], segment: bool, kind: TopicKind
) -> InvalidEvent:
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


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL_VALUE_CHARS else text[: _DETAIL_VALUE_CHARS - 3] + "..."


def _check_lead_id(lead_id: str, field: str) -> None:
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


def _time_ms(value: str | int | float, field: str, now_ms: int, limits: Limits) -> int:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidEvent("bad_time", f"{field}: {exc}") from None
        if parsed.tzinfo is None:
            raise InvalidEvent("bad_time", f"{field}: no timezone")
        time_ms = (parsed - _EPOCH) // _ONE_MS
    elif isinstance(value, float):  # JSON Schema counts 1.7e12 as an integer
        time_ms = int(value)
    else:
        time_ms = value
    if time_ms > now_ms + limits.max_future_skew_ms:
        raise InvalidEvent(
            "time_out_of_range",
            f"{field} is {time_ms - now_ms} ms in the future, max {limits.max_future_skew_ms}",
        )
    if time_ms < now_ms - limits.max_age_ms:
        raise InvalidEvent(
            "time_out_of_range",
            f"{field} is {now_ms - time_ms} ms in the past, max {limits.max_age_ms}",
        )
    return time_ms


def _check_counts(
    properties: Mapping[str, Any],
    context: Mapping[str, Any],
    traits: Mapping[str, Any],
    limits: Limits,
) -> None:
    count = len(properties) + len(context) + len(traits)
    if count > limits.max_properties:
        raise InvalidEvent(
            "too_many_properties",
            f"properties, context and traits have {count} keys in all, max {limits.max_properties}",
        )


def _refine_schema_error(doc: dict[str, Any], kind: TopicKind, segment: bool) -> None:
    """Raise a more specific InvalidEvent when the type, lead id or time field is the problem."""
    if _type_fields_are_strings(doc, segment):
        event_type = _segment_type(doc) if segment else _TYPE_BY_NAME.get(doc["type"])
        if event_type is None or _TOPIC_BY_TYPE[event_type] != kind:
            raise _type_error(event_type, doc, segment, kind)
    lead_fields = ("userId", "anonymousId") if segment else ("lead_id",)
    for field in lead_fields:
        value = doc.get(field)
        if isinstance(value, str):
            _check_lead_id(value, field)
    time_fields = ("timestamp", "originalTimestamp") if segment else ("time",)
    for field in time_fields:
        value = doc.get(field)
        if isinstance(value, str) and not _RFC3339.match(value):
            raise InvalidEvent(
                "bad_time", f"{field} is not an RFC 3339 date-time with a timezone offset"
            )
        if isinstance(value, float) and not value.is_integer():
            raise InvalidEvent("bad_time", f"{field} is not a whole number of epoch milliseconds")


def _schema_rejection(doc: dict[str, Any], kind: TopicKind, segment: bool) -> InvalidEvent:
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


def _schema_detail(doc: dict[str, Any], segment: bool, message: str) -> str:
    # fastjsonschema reports a failed anyOf as "data cannot be validated by any definition";
    # name the two Segment disjunctions instead.
    if segment:
        if not isinstance(doc.get("userId"), str) and not isinstance(doc.get("anonymousId"), str):
            return "data must contain a userId or anonymousId string"
        if "timestamp" not in doc and "originalTimestamp" not in doc:
            return "data must contain timestamp or originalTimestamp"
    return message


def _decode_error(raw: bytes, exc: orjson.JSONDecodeError) -> InvalidEvent:
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as decode_exc:
        return InvalidEvent("not_utf8", str(decode_exc))
    if not text.strip():
        return InvalidEvent("empty", "message value is only whitespace")
    return InvalidEvent("malformed_json", str(exc))


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
