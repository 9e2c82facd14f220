"""The native envelope (event_id, lead_id, type, time, ...) of a schema-valid message -> Event."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from streamscore.events.envelope import Event, Limits, check_counts, event_time_ms
from streamscore.events.rejects import type_error
from streamscore.events.types import TOPIC_BY_TYPE, EventType, TopicKind, native_type

_EMPTY: Mapping[str, Any] = MappingProxyType({})
# A plain dict copy of the public read-only table: a MappingProxyType lookup costs more.
_TOPIC_BY_TYPE: dict[EventType, TopicKind] = dict(TOPIC_BY_TYPE)


def from_native(doc: dict[str, Any], kind: TopicKind, now_ms: int, limits: Limits) -> Event:
    """The Event of a native message the `kind` topic's schema has accepted."""
    # The schema has checked every field's shape, including the lead id rules.
    event_type = native_type(doc["type"])
    if event_type is None or _TOPIC_BY_TYPE[event_type] != kind:
        raise type_error(event_type, doc, False, kind)
    time_ms = event_time_ms(doc["time"], "time", now_ms, limits)
    properties = doc.get("properties", _EMPTY)
    context = doc.get("context", _EMPTY)
    traits = doc.get("traits", _EMPTY)
    check_counts(properties, context, traits, limits)
    return Event(doc["event_id"], doc["lead_id"], event_type, time_ms, properties, context, traits)
