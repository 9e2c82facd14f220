"""Closed sets of the event contract: event types, input topic kinds, and the Segment aliases."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final


class EventType(StrEnum):
    """What a lead did; the value is the native `type` and the name the scoring rules use."""

    PAGE_VIEW = "page_view"
    EMAIL_OPEN = "email_open"
    EMAIL_CLICK = "email_click"
    DOWNLOAD = "download"
    WEBINAR_SIGNUP = "webinar_signup"
    TRIAL_SIGNUP = "trial_signup"
    DEMO_REQUEST = "demo_request"
    CONTACT_REQUEST = "contact_request"
    UNSUBSCRIBE = "unsubscribe"
    IDENTIFY = "identify"
    #: An anonymous id is the same person as this lead (Segment alias; identity merge).
    ALIAS = "alias"
    #: The lead belongs to an account (Segment group; account roll-up).
    GROUP = "group"
    #: A custom tracker event; rules match its name as the field `event`.
    TRACK = "track"


class TopicKind(StrEnum):
    """Which input topic a message came from; each kind carries a fixed set of event types."""

    PAGE_VIEWS = "page_views"
    EMAIL_EVENTS = "email_events"
    DOWNLOADS = "downloads"
    UNSUBSCRIBES = "unsubscribes"
    PROFILES = "profiles"
    TRACK = "track"


TYPES_BY_TOPIC: Mapping[TopicKind, tuple[EventType, ...]] = MappingProxyType(
    {
        TopicKind.PAGE_VIEWS: (EventType.PAGE_VIEW,),
        TopicKind.EMAIL_EVENTS: (EventType.EMAIL_OPEN, EventType.EMAIL_CLICK),
        TopicKind.DOWNLOADS: (
            EventType.DOWNLOAD,
            EventType.WEBINAR_SIGNUP,
            EventType.TRIAL_SIGNUP,
            EventType.DEMO_REQUEST,
            EventType.CONTACT_REQUEST,
        ),
        TopicKind.UNSUBSCRIBES: (EventType.UNSUBSCRIBE,),
        TopicKind.PROFILES: (EventType.IDENTIFY, EventType.ALIAS, EventType.GROUP),
        # Custom tracker events (a Segment `track` whose name is not in SEGMENT_TRACK_ALIASES,
        # or the native type `track`): rules match their name as the field `event`.
        TopicKind.TRACK: (EventType.TRACK,),
    }
)

TOPIC_BY_TYPE: Mapping[EventType, TopicKind] = MappingProxyType(
    {t: kind for kind, types in TYPES_BY_TOPIC.items() for t in types}
)

# The input schema file of each topic kind, relative to the schemas directory.
SCHEMA_FILE_BY_TOPIC: Mapping[TopicKind, str] = MappingProxyType(
    {
        TopicKind.PAGE_VIEWS: "page-views.v1.json",
        TopicKind.EMAIL_EVENTS: "email-events.v1.json",
        TopicKind.DOWNLOADS: "downloads.v1.json",
        TopicKind.UNSUBSCRIBES: "unsubscribes.v1.json",
        TopicKind.PROFILES: "profiles.v1.json",
        TopicKind.TRACK: "track.v1.json",
    }
)

# Segment `type` values that map straight to one of ours; `track` goes through the alias table.
SEGMENT_TYPE_ALIASES: Mapping[str, EventType] = MappingProxyType(
    {
        "page": EventType.PAGE_VIEW,
        "identify": EventType.IDENTIFY,
        "alias": EventType.ALIAS,
        "group": EventType.GROUP,
    }
)

#: Our types that a Segment `track` call cannot take by name: alias and group are calls of their
#: own, and a track call named "track" is a custom event like any other.
_NOT_TRACK_NAMES = frozenset({EventType.ALIAS, EventType.GROUP, EventType.TRACK})

# Segment `track` event names (exact, case-sensitive: the schemas list them in `enum`s) -> our
# type. Only names whose meaning is unambiguous; a generic "Form Submitted" is left out on
# purpose, since it may be a newsletter form and would over-score as a contact request. Our own
# type names are accepted too, so a tracker can send `{"type": "track", "event": "download"}`.
# Keep this table and the `enum`s of the `segment` branch in schemas/*.v1.json identical
# (tests/unit/events/test_parse.py checks both directions).
SEGMENT_TRACK_ALIASES: Mapping[str, EventType] = MappingProxyType(
    {
        "Email Opened": EventType.EMAIL_OPEN,
        "Email Link Clicked": EventType.EMAIL_CLICK,
        "Unsubscribed": EventType.UNSUBSCRIBE,
        "Email Unsubscribed": EventType.UNSUBSCRIBE,
        "Content Downloaded": EventType.DOWNLOAD,
        "Whitepaper Downloaded": EventType.DOWNLOAD,
        "File Downloaded": EventType.DOWNLOAD,
        "Webinar Registered": EventType.WEBINAR_SIGNUP,
        "Trial Started": EventType.TRIAL_SIGNUP,
        "Demo Requested": EventType.DEMO_REQUEST,
        "Contact Requested": EventType.CONTACT_REQUEST,
        **{t.value: t for t in EventType if t not in _NOT_TRACK_NAMES},
    }
)

# Plain dict copies of the tables above for the lookups made per message: a MappingProxyType
# lookup costs more.
_TYPE_BY_NAME: dict[str, EventType] = {t.value: t for t in EventType}
_TYPE_ALIASES: dict[str, EventType] = dict(SEGMENT_TYPE_ALIASES)
_TRACK_ALIASES: dict[str, EventType] = dict(SEGMENT_TRACK_ALIASES)

#: Our type for a native message's `type` string (None if unknown); the bound dict.get itself,
#: so the per-message lookup costs no extra Python call.
native_type: Final[Callable[[str], EventType | None]] = _TYPE_BY_NAME.get


def segment_type(doc: Mapping[str, Any], kind: TopicKind | None = None) -> EventType | None:
    """Our type for a Segment message (None if unknown or not strings): `type`, or track `event`.

    On the custom track topic (`kind` TRACK) a track call whose name is not a known alias is a
    custom event, EventType.TRACK; elsewhere such a name is unknown.
    """
    call = doc.get("type")
    if call == "track":
        name = doc.get("event")
        if not isinstance(name, str):
            return None
        known = _TRACK_ALIASES.get(name)
        if known is None and kind is TopicKind.TRACK:
            return EventType.TRACK
        return known
    return _TYPE_ALIASES.get(call) if isinstance(call, str) else None
