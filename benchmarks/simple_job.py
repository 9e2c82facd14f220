"""Issue 16's simple job in one place: the points of each event type, the half-life, the handoff.

The job: a page view +1, or +10 instead for /pricing and /demo; an email open +2; a download +8;
an unsubscribe -30; every award (the penalty too) halves every 7 days of event time; a handoff
when the score reaches 50, re-armed once it falls below 40. streamscore runs it from
benchmarks/simple_rules.yaml; the baselines (c) and (q) and the reference take it from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HALF_LIFE_MS = 7 * 86_400_000
HANDOFF_AT = 50.0
REARM_BELOW = 40.0
#: Exact paths whose view earns HIGH_INTENT_POINTS instead of PAGE_VIEW_POINTS.
HIGH_INTENT_PATHS = frozenset({"/pricing", "/demo"})
PAGE_VIEW_POINTS = 1.0
HIGH_INTENT_POINTS = 10.0
POINTS_BY_TYPE = {"email_open": 2.0, "download": 8.0, "unsubscribe": -30.0}
#: The input topics of the job, as indexes into the benchmark's topic list (see workload.py).
EVENT_TYPES = ("page_view", "email_open", "download", "unsubscribe")


def points_of(doc: Mapping[str, Any]) -> float | None:
    """Points a native event document earns; None for a type the job does not score."""
    event_type = doc.get("type")
    if event_type == "page_view":
        props = doc.get("properties")
        path = props.get("path") if isinstance(props, dict) else None
        return HIGH_INTENT_POINTS if path in HIGH_INTENT_PATHS else PAGE_VIEW_POINTS
    return POINTS_BY_TYPE.get(event_type) if isinstance(event_type, str) else None
