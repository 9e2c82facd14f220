"""Explain a lead (GET /leads/{id}, `streamscore lead`): its state judged at now; pure."""

from __future__ import annotations

from typing import Any

from streamscore.events.timefmt import format_time_ms
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import BANT_CRITERIA, GRADES, CompiledRules
from streamscore.scoring.state import (
    LeadState,
    advance,
    clone,
    contributions_at,
    disqualified,
    engagement_at,
    penalty_at,
    score_at,
)
from streamscore.scoring.story import items as story_items


def describe_lead(state: LeadState, rules: CompiledRules, now_ms: int) -> dict[str, Any]:
    """Score, tier, grade, BANT, arming and every rule's points, as the model judges them at now.

    The stored state is as of the lead's last evaluation: a quiet lead may be due tier drops
    the decay tick has not applied yet, and may have decayed below rearm_below. A copy is
    advanced to now and re-armed the way the next event would find it, so the view never shows
    a decayed score beside a stale tier or arming. The stored state is not changed.
    """
    at = now_ms if state.last_ms is None else max(now_ms, state.last_ms)
    judged = clone(state)
    dropped: list[Output] = []
    advance(judged, rules, at, dropped)
    score = score_at(judged, rules, at)
    if score < rules.rearm_below:
        judged.armed = True
    fit = judged.fit
    contributions = sorted(contributions_at(judged, rules, at), key=lambda kv: (-abs(kv[1]), kv[0]))
    return {
        "lead_id": state.lead_id,
        "score": round(score, 3),
        "engagement": round(engagement_at(judged, rules, at), 3),
        "fit": round(fit, 3),
        "penalties": round(penalty_at(judged, rules, at), 3),
        "tier": rules.tiers[judged.tier].name,
        "grade": GRADES[rules.grade_of(fit) - 1],
        "bant": {c: bool(judged.bant >> i & 1) for i, c in enumerate(BANT_CRITERIA)},
        "disqualified": disqualified(judged),
        "handoff_armed": judged.armed,
        "last_event_time": None if state.last_ms is None else format_time_ms(state.last_ms),
        "rules_version": judged.rules_version,
        "as_of": format_time_ms(at),
        "contributions": [{"rule": r, "points": round(p, 3)} for r, p in contributions],
        "attributes": {
            name: {"value": record.value, "seen_at": format_time_ms(record.time_ms)}
            for name, record in sorted((judged.profile or {}).items())
        },
        "identity": _identity(state),
        "account": None
        if state.account is None
        else {"id": state.account[0], "from": "group" if state.account[1] else "email"},
        "story": [
            {"time": format_time_ms(i.time_ms), "kind": i.kind, "label": i.label, "score": i.score}
            for i in story_items(state)
        ],
    }


def _identity(state: LeadState) -> dict[str, Any]:
    """The ids merged into the lead (with the linking events' times), the ids it asked to merge
    and not yet merged, and the lead it was merged into, if it was."""
    ident = state.identity
    merged = {} if ident is None else ident.merged
    links = {} if ident is None else ident.links
    return {
        "anonymous": state.anonymous,
        "merged_ids": [
            {"id": other, "linked_at": format_time_ms(t)} for other, t in sorted(merged.items())
        ],
        "pending_ids": sorted(links),
        "merged_into": None if ident is None else ident.merged_into,
    }
