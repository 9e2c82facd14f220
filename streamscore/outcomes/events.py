"""Outcome events (schemas/outcomes.v1.json): bytes -> orjson -> schema -> checks -> Outcome.

The checks and reject reasons are parse_event's, in the same order, so the worker dead-letters a
bad outcome exactly like any other input:

1. size (`too_large`), `empty`, then decoding: `not_utf8`, `malformed_json`, `not_an_object`;
2. the JSON Schema (`schema`); when it rejects a message whose type, lead id, time or amount is
   itself wrong, the reason names that field instead, in this order: `unknown_type` /
   `wrong_topic` (a scoring event sent to the outcomes topic), `bad_lead_id`, `bad_time`,
   `bad_amount` (negative, above MAX_AMOUNT, or not a JSON number);
3. on a schema-valid message: `bad_time` (no real instant), `time_out_of_range` (the Limits'
   future skew and age, against the CRM's time), `too_many_properties`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, NamedTuple

import jsonschema_rs
from fastjsonschema import JsonSchemaValueException

from streamscore.errors import ConfigError, InvalidEvent
from streamscore.events import (
    SEGMENT_TRACK_ALIASES,
    SEGMENT_TYPE_ALIASES,
    TOPIC_BY_TYPE,
    EventType,
    Limits,
    compile_schema,
    load_schema,
)

# parse_event's own byte, time and lead-id checks, reused so that both inputs reject alike.
from streamscore.events.envelope import event_time_ms
from streamscore.events.parse import load_object
from streamscore.events.rejects import check_lead_id
from streamscore.events.timefmt import RFC3339_PATTERN

SCHEMA_FILE: Final = "outcomes.v1.json"
#: The largest amount accepted (currency units); the schema's `maximum`, kept equal by a test.
MAX_AMOUNT: Final = 1_000_000_000_000


class OutcomeType(StrEnum):
    """One step of a lead's life in the CRM; the value is the native `type`."""

    SALES_ACCEPTED = "sales_accepted"
    SALES_REJECTED = "sales_rejected"
    FIRST_TOUCH = "first_touch"
    OPPORTUNITY_CREATED = "opportunity_created"
    WON = "won"
    LOST = "lost"


#: Channels of a first touch (the schema's enum).
CHANNELS: Final = ("call", "email", "meeting", "other")

#: Segment `track` event names -> outcome type; the native names are accepted too. Keep equal to
#: the `event` enum of the schema's segment branch (a unit test checks both directions).
SEGMENT_OUTCOME_ALIASES: Mapping[str, OutcomeType] = MappingProxyType(
    {
        "Lead Accepted": OutcomeType.SALES_ACCEPTED,
        "Lead Rejected": OutcomeType.SALES_REJECTED,
        "Lead Contacted": OutcomeType.FIRST_TOUCH,
        "Opportunity Created": OutcomeType.OPPORTUNITY_CREATED,
        "Deal Won": OutcomeType.WON,
        "Deal Lost": OutcomeType.LOST,
        **{t.value: t for t in OutcomeType},
    }
)

_TYPE_BY_NAME: dict[str, OutcomeType] = {t.value: t for t in OutcomeType}
_EVENT_TYPE_BY_NAME: dict[str, EventType] = {t.value: t for t in EventType}
_RFC3339 = re.compile(RFC3339_PATTERN.removesuffix("$") + r"\Z")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_OPTIONAL_FIELDS = ("currency", "rep_id", "reason", "channel", "source")


class Outcome(NamedTuple):
    """One validated outcome; `time_ms` is the CRM's time in epoch milliseconds (a NamedTuple,
    like Event: a frozen dataclass of ten fields costs about 8 us to build, this under 1)."""

    outcome_id: str
    lead_id: str
    type: OutcomeType
    time_ms: int
    amount: float | None = None
    currency: str | None = None
    rep_id: str | None = None
    reason: str | None = None
    channel: str | None = None
    source: str | None = None


def parse_outcome(raw: bytes | None, now_ms: int, limits: Limits) -> Outcome:
    """Validate one message of the outcomes topic; raises only InvalidEvent."""
    doc = load_object(raw, "message", limits)
    segment = "messageId" in doc  # the schema's top-level `if`
    if not _fast_check().is_valid(doc):
        raise _schema_rejection(doc, segment)
    if segment:
        lead_id = doc.get("userId") or doc["anonymousId"]
        field = "timestamp" if "timestamp" in doc else "originalTimestamp"
        fields = doc.get("properties", _EMPTY)
        outcome_type = SEGMENT_OUTCOME_ALIASES[doc["event"]]
        outcome_id = doc["messageId"]
    else:
        lead_id = doc["lead_id"]
        field = "time"
        fields = doc
        outcome_type = _TYPE_BY_NAME[doc["type"]]
        outcome_id = doc["outcome_id"]
    time_ms = event_time_ms(doc[field], field, now_ms, limits)
    count = len(doc.get("properties", _EMPTY)) + len(doc.get("context", _EMPTY))
    if count > limits.max_properties:
        raise InvalidEvent(
            "too_many_properties",
            f"properties and context have {count} keys in all, max {limits.max_properties}",
        )
    amount = fields.get("amount")
    return Outcome(
        outcome_id,
        lead_id,
        outcome_type,
        time_ms,
        None if amount is None else float(amount),
        *(fields.get(name) for name in _OPTIONAL_FIELDS),
    )


@functools.cache
def _fast_check() -> jsonschema_rs.Validator:
    try:
        return jsonschema_rs.validator_for(load_schema(SCHEMA_FILE))
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        raise ConfigError(f"schema {SCHEMA_FILE}: not a valid JSON Schema: {exc}") from None


def compile_outcome_schema() -> None:
    """Load and compile the outcomes schema now, so a broken install fails at startup."""
    _fast_check()
    compile_schema(SCHEMA_FILE)


def _schema_rejection(doc: dict[str, Any], segment: bool) -> InvalidEvent:
    """Why the schema rejected `doc`: a refined reason, else the schema's own words."""
    _refine(doc, segment)
    try:
        compile_schema(SCHEMA_FILE)(doc)
    except JsonSchemaValueException as exc:
        return InvalidEvent("schema", exc.message)
    first = next(iter(_fast_check().iter_errors(doc)), None)
    return InvalidEvent("schema", first.message if first else "data does not match the schema")


def _refine(doc: dict[str, Any], segment: bool) -> None:
    """Raise the specific InvalidEvent when the type, lead id, time or amount is the problem."""
    _check_type(doc, segment)
    for field in ("userId", "anonymousId") if segment else ("lead_id",):
        value = doc.get(field)
        if isinstance(value, str):
            check_lead_id(value, field)
    for field in ("timestamp", "originalTimestamp") if segment else ("time",):
        value = doc.get(field)
        if isinstance(value, str) and not _rfc3339(value):
            raise InvalidEvent(
                "bad_time", f"{field} is not an RFC 3339 date-time with a timezone offset"
            )
        if isinstance(value, float) and not value.is_integer():
            raise InvalidEvent("bad_time", f"{field} is not a whole number of epoch milliseconds")
    holder = doc.get("properties") if segment else doc
    if isinstance(holder, dict) and "amount" in holder:
        _check_amount(holder["amount"], "properties.amount" if segment else "amount")


def _check_type(doc: Mapping[str, Any], segment: bool) -> None:
    kind = doc.get("type")
    if segment:
        if kind == "track":
            name = doc.get("event")
            if not isinstance(name, str) or name in SEGMENT_OUTCOME_ALIASES:
                return
            scoring = SEGMENT_TRACK_ALIASES.get(name)
            named = f"Segment track event {_shown(name)}"
        elif isinstance(kind, str):
            scoring = SEGMENT_TYPE_ALIASES.get(kind)
            named = f"Segment type {_shown(kind)}"
        else:
            return
    else:
        if not isinstance(kind, str) or kind in _TYPE_BY_NAME:
            return
        scoring = _EVENT_TYPE_BY_NAME.get(kind)
        named = f"type {_shown(kind)}"
    if scoring is not None:
        raise InvalidEvent(
            "wrong_topic",
            f"{scoring.value} belongs on the {TOPIC_BY_TYPE[scoring]} topic, not outcomes",
        )
    raise InvalidEvent("unknown_type", f"{named} is not an outcome type")


def _check_amount(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent("bad_amount", f"{field} is {_shown(value)}, not a JSON number")
    if value < 0:
        raise InvalidEvent("bad_amount", f"{field} is negative ({value})")
    if value > MAX_AMOUNT:
        raise InvalidEvent("bad_amount", f"{field} is {value}, above the maximum {MAX_AMOUNT:.0e}")


def _rfc3339(value: str) -> bool:
    return _RFC3339.match(value) is not None


def _shown(value: object, limit: int = 64) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
