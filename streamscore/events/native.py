"""The native envelope (event_id, lead_id, type, time, ...) of a schema-valid message -> Event.

A custom `track` event carries its name in `event`; an `alias` links `previous_id`, an
`identify` may link `anonymous_id`, and a `group` call its `group_id`. Native leads are known
(not anonymous): a producer that writes the envelope names leads it knows.
"""

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
    if event_type is EventType.TRACK:
        return Event(
            doc["event_id"], doc["lead_id"], event_type, time_ms, properties, context, traits,
            doc["event"],
        )  # fmt: skip
    link_field = _LINK_FIELDS.get(event_type)
    if link_field is not None:
        link = doc.get(link_field)
        # An id linked to itself links nothing (a group id may equal the lead's, though).
        if link is not None and (event_type is EventType.GROUP or link != doc["lead_id"]):
            return Event(
                doc["event_id"], doc["lead_id"], event_type, time_ms, properties, context,
                traits, None, str(link),
            )  # fmt: skip
    return Event(doc["event_id"], doc["lead_id"], event_type, time_ms, properties, context, traits)


#: The field naming the other id of an alias, identify or group event.
_LINK_FIELDS: dict[EventType, str] = {
    EventType.ALIAS: "previous_id",
    EventType.IDENTIFY: "anonymous_id",
    EventType.GROUP: "group_id",
}
