"""What the lab reads from a namespace's lead states: snapshots, outcomes and learning examples.

Pure: stored lead states in, the lab's values out. The commands scan a namespace (live, a
replay, a shadow) and pass each state here, judged under the namespace's rules at one common
time, so that two models are compared at the same moment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from streamscore.lab.diff import LeadOutcome, LeadSnapshot, Snapshot
from streamscore.lab.examples import Example, Outcome, features_from_contributions
from streamscore.outcomes.events import OutcomeType
from streamscore.outcomes.funnel import Funnel, OutcomeRecord, from_wire, stages
from streamscore.scoring.rules import CompiledRules
from streamscore.scoring.state import LeadState, advance, clone, contributions_at, score_at

_OPPORTUNITY = frozenset({OutcomeType.OPPORTUNITY_CREATED, OutcomeType.WON, OutcomeType.LOST})
_CLOSE_RANK = {OutcomeType.LOST: 0, OutcomeType.WON: 1}
#: Reasons kept per lead in a snapshot (the diff lists the largest differences among points).
REASONS = 5


def _funnel(state: LeadState) -> Funnel | None:
    return from_wire(state.funnel) if state.funnel else None


def handed_off(state: LeadState) -> bool:
    """Whether the model handed the lead off at any time of its history (or holds it so now)."""
    funnel = _funnel(state)
    return (funnel is not None and bool(funnel.handoffs)) or not state.armed


def lead_snapshot(state: LeadState, rules: CompiledRules, at_ms: int) -> LeadSnapshot:
    """The lead under its model's rules, judged at `at_ms` (or its last evaluation, if later)."""
    at = at_ms if state.last_ms is None else max(at_ms, state.last_ms)
    judged = clone(state)
    advance(judged, rules, at, [])
    points = {rule: value for rule, value in contributions_at(judged, rules, at) if value}
    reasons = sorted(points.items(), key=lambda kv: (-kv[1], kv[0]))[:REASONS]
    return LeadSnapshot(
        state.lead_id,
        rules.tiers[judged.tier].name,
        round(score_at(judged, rules, at), 6),
        handed_off(state),
        tuple(reasons),
        points,
    )


def snapshot(model: str, rules: CompiledRules, states: Iterable[LeadState], at_ms: int) -> Snapshot:
    """Every lead of one namespace, judged at `at_ms`."""
    leads = {s.lead_id: lead_snapshot(s, rules, at_ms) for s in states}
    return Snapshot(model, rules.version, tuple(t.name for t in rules.tiers), leads)


def _won(outcomes: Iterable[OutcomeRecord]) -> bool:
    closes = [o for o in outcomes if o.type in _CLOSE_RANK]
    if not closes:
        return False
    latest = max(closes, key=lambda o: (o.time_ms, _CLOSE_RANK[o.type], o.outcome_id))
    return latest.type is OutcomeType.WON


def lead_outcome(state: LeadState) -> LeadOutcome | None:
    """What sales made of the lead, from the outcomes in its funnel (None: none known).

    An opportunity: opportunity_created, won or lost; won: its latest close is a win (a deal
    re-opened and won overrides its loss, as the funnel counts it).
    """
    funnel = _funnel(state)
    if funnel is None or not funnel.outcomes:
        return None
    opportunity = any(o.type in _OPPORTUNITY for o in funnel.outcomes)
    return LeadOutcome(opportunity, _won(funnel.outcomes))


def merge_outcomes(*sources: Mapping[str, LeadOutcome]) -> dict[str, LeadOutcome]:
    """Outcomes per lead from several namespaces: a lead reached a stage if any saw it do so."""
    merged: dict[str, LeadOutcome] = {}
    for source in sources:
        for lead_id, outcome in source.items():
            seen = merged.get(lead_id, LeadOutcome(False, False))
            merged[lead_id] = LeadOutcome(
                seen.opportunity or outcome.opportunity, seen.won or outcome.won
            )
    return merged


class ExampleCount(NamedTuple):
    """Handoffs met while collecting examples, and why some were left out."""

    handoffs: int = 0
    other_rules: int = 0  # scored under another rules version
    too_recent: int = 0  # younger than the minimum age: their outcome may still come


def examples_of(
    state: LeadState, rules: CompiledRules, mature_before_ms: int | None
) -> tuple[list[Example], ExampleCount]:
    """A learning example per handoff of the lead made under `rules` (its version), with the
    furthest stage sales reached for that handoff; handoffs made at or after
    `mature_before_ms` are left out (None: none are)."""
    funnel = _funnel(state)
    if funnel is None:
        return [], ExampleCount()
    examples: list[Example] = []
    other = recent = 0
    for handoff in funnel.handoffs:
        if handoff.rules_version != rules.version:
            other += 1
            continue
        if mature_before_ms is not None and handoff.time_ms >= mature_before_ms:
            recent += 1
            continue
        reached = stages(funnel, handoff, rules.outcomes)
        outcome: Outcome = (
            "won"
            if reached.close == "won"
            else "opportunity"
            if reached.opportunity_ms is not None
            else "none"
        )
        examples.append(
            Example(
                state.lead_id,
                features_from_contributions(handoff.features, handoff.bant_mask, rules),
                handoff.score,
                outcome,
            )
        )
    return examples, ExampleCount(len(funnel.handoffs), other, recent)
