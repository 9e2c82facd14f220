"""A schema-valid Segment message (page, identify, alias, group, track) -> Event.

The lead is `userId`, else `anonymousId` (the event is then `anonymous`); the time `timestamp`,
else `originalTimestamp`; `context.traits` are merged under explicit `traits`;
`context.userAgent` is copied to `context.user_agent`, and a page view's `context.page.path` to
`properties.path`. A custom track event keeps its name; an alias links its `previousId`, an
identify carrying both ids its `anonymousId`, and a group call its `groupId`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from streamscore.events.envelope import Event, Limits, check_counts, event_time_ms
from streamscore.events.rejects import type_error
from streamscore.events.types import TOPIC_BY_TYPE, EventType, TopicKind, segment_type

_EMPTY: Mapping[str, Any] = MappingProxyType({})
# A plain dict copy of the public read-only table: a MappingProxyType lookup costs more.
_TOPIC_BY_TYPE: dict[EventType, TopicKind] = dict(TOPIC_BY_TYPE)


def from_segment(doc: dict[str, Any], kind: TopicKind, now_ms: int, limits: Limits) -> Event:
    """The Event of a Segment message the `kind` topic's schema has accepted."""
    event_type = segment_type(doc, kind)
    if event_type is None or _TOPIC_BY_TYPE[event_type] != kind:
        raise type_error(event_type, doc, True, kind)
    # The schema allows userId null or absent only when anonymousId is a (valid) string.
    user_id = doc.get("userId")
    lead_id = user_id or doc["anonymousId"]
    field = "timestamp" if "timestamp" in doc else "originalTimestamp"
    time_ms = event_time_ms(doc[field], field, now_ms, limits)
    properties = doc.get("properties", _EMPTY)
    context = doc.get("context", _EMPTY)
    traits = doc.get("traits", _EMPTY)
    # Counted as sent, before the mapping below adds keys.
    check_counts(properties, context, traits, limits)
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
    if event_type is EventType.TRACK:
        return Event(
            doc["messageId"], lead_id, event_type, time_ms, properties, context, traits,
            doc["event"], None, not user_id,
        )  # fmt: skip
    link = _link(doc, event_type, user_id)
    return Event(
        doc["messageId"], lead_id, event_type, time_ms, properties, context, traits,
        None, link, not user_id,
    )  # fmt: skip


def _link(doc: dict[str, Any], event_type: EventType, user_id: str | None) -> str | None:
    """The other id an alias, identify or group call names (None for any other event)."""
    if event_type is EventType.ALIAS:
        previous = str(doc["previousId"])
        return previous if previous != (user_id or doc["anonymousId"]) else None
    if event_type is EventType.GROUP:
        return str(doc["groupId"])
    if event_type is EventType.IDENTIFY and user_id:
        anonymous_id = doc.get("anonymousId")
        if isinstance(anonymous_id, str) and anonymous_id != user_id:
            return anonymous_id
    return None
