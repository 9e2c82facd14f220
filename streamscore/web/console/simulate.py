"""The simulator: what one event would do to a lead's score and tier, with nothing written; pure.

The event goes through the worker's own parser (parse_event, so a pasted message is refused for
the reason the worker would dead-letter it), the engine (decide) and the state arithmetic
(apply_event) on a copy of the lead. The lead is judged before and after at the time the worker
would judge the event: the later of its time and the lead's present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from streamscore.errors import InvalidEvent
from streamscore.events.envelope import Event, Limits
from streamscore.events.parse import parse_event
from streamscore.events.timefmt import format_time_ms
from streamscore.events.types import TOPIC_BY_TYPE, TopicKind, native_type, segment_type
from streamscore.scoring.engine import DISQUALIFY, REQUALIFY, decide
from streamscore.scoring.explain import describe_lead
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import CompiledRules
from streamscore.scoring.state import LeadState, apply_event, clone, new_lead


@dataclass(frozen=True, slots=True)
class Simulation:
    """A lead before and after one event, and what the event earned and caused."""

    event: Event
    rules_version: str
    known: bool  # the lead is in Redis (else it would be a new lead)
    duplicate: bool  # its id was seen within the dedup window: it would change nothing
    at: str  # when the lead is judged
    before: dict[str, Any]  # describe_lead before
    after: dict[str, Any]  # ... and after
    matched: tuple[tuple[str, float], ...]  # engagement rules the event matches, with their points
    attributes: tuple[tuple[str, str, float], ...]  # (attribute, value, fit points) it sets
    flag: str | None  # "disqualify" or "requalify"
    changes: tuple[tuple[str, float, float], ...]  # (rule, points before, after) that differ
    outputs: tuple[Output, ...]  # tier changes and handoffs it would emit


def topic_kind_of(doc: dict[str, Any]) -> TopicKind:
    """The input topic a message belongs on, from its type (Segment or native)."""
    if "messageId" in doc:
        event_type = segment_type(doc)
        if event_type is None and doc.get("type") == "track":
            return TopicKind.TRACK  # a custom track event
    else:
        raw_type = doc.get("type")
        event_type = native_type(raw_type) if isinstance(raw_type, str) else None
    # An unknown type: any topic will do, parse_event refuses it for that reason.
    return TopicKind.PAGE_VIEWS if event_type is None else TOPIC_BY_TYPE[event_type]


def parse_pasted(text: str, now_ms: int, limits: Limits) -> Event:
    """A pasted message (native or Segment JSON), parsed as the worker would; else InvalidEvent."""
    raw = text.encode("utf-8", "surrogatepass")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None  # parse_event names the reason
    kind = topic_kind_of(doc) if isinstance(doc, dict) else TopicKind.PAGE_VIEWS
    return parse_event(raw, kind, now_ms, limits)


def _object(text: str, field: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("malformed_json", f"{field}: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidEvent("not_an_object", f"{field} must be a JSON object")
    return value


def event_of(
    lead_id: str,
    event_type: str,
    properties: str,
    traits: str,
    now_ms: int,
    limits: Limits,
) -> Event:
    """A native event of `event_type` for `lead_id` at now (properties and traits as JSON text)."""
    doc: dict[str, Any] = {
        "event_id": f"console-simulation-{now_ms}",
        "lead_id": lead_id,
        "type": event_type,
        "time": format_time_ms(now_ms),
    }
    props, trait_map = _object(properties, "properties"), _object(traits, "traits")
    if props:
        doc["properties"] = props
    if trait_map:
        doc["traits"] = trait_map
    return parse_pasted(orjson.dumps(doc).decode(), now_ms, limits)


def simulate(
    state: LeadState | None, event: Event, rules: CompiledRules, dedup_window_ms: int
) -> Simulation:
    """Apply `event` to a copy of the lead (a new lead when `state` is None); nothing is kept."""
    base = clone(state) if state is not None else new_lead(event.lead_id)
    at = event.time_ms if base.last_ms is None else max(base.last_ms, event.time_ms)
    before = describe_lead(base, rules, at)
    decision = decide(event, rules)
    changed = clone(base)
    outputs: list[Output] = []
    applied = apply_event(
        changed, rules, event.event_id, event.time_ms, decision, dedup_window_ms, outputs
    )
    after = describe_lead(changed, rules, at)
    points_before = {c["rule"]: c["points"] for c in before["contributions"]}
    points_after = {c["rule"]: c["points"] for c in after["contributions"]}
    changes = tuple(
        (rule, points_before.get(rule, 0.0), points_after.get(rule, 0.0))
        for rule in sorted(points_before.keys() | points_after.keys())
        if points_before.get(rule, 0.0) != points_after.get(rule, 0.0)
    )
    flag = {DISQUALIFY: "disqualify", REQUALIFY: "requalify"}.get(decision.flag)
    return Simulation(
        event=event,
        rules_version=rules.version,
        known=state is not None,
        duplicate=not applied,
        at=format_time_ms(at),
        before=before,
        after=after,
        matched=tuple((rules.engagement[i].id, points) for i, points in decision.awards),
        attributes=tuple(
            (rules.attributes[u.attribute].name, u.value, u.fit_points) for u in decision.attributes
        ),
        flag=flag,
        changes=changes,
        outputs=tuple(outputs),
    )
