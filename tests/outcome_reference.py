"""Brute-force reference of the outcome KPIs: attribution and stages by plain scans per handoff.

It works from the whole list of a lead's handoffs and distinct outcomes at once (no state, no
deltas, no bisect), so the properties can compare it with the sum of funnel deltas over any
arrival order.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from streamscore.outcomes.events import Outcome, OutcomeType
from streamscore.outcomes.funnel import ScoreSnapshot
from streamscore.outcomes.kpi import band_label, field, global_field, reason_label, time_bucket
from streamscore.scoring.outcome_rules import OutcomeRules


@dataclass
class HandoffFacts:
    """Everything the reference found out about one handoff."""

    snapshot: ScoreSnapshot
    outcomes: list[Outcome]
    touched_ms: int | None
    opportunity_ms: int | None
    verdict: str | None
    rejection_reason: str | None
    close: str | None
    close_ms: int | None
    loss_reason: str | None
    sales_first: bool
    deadline_ms: int | None
    met: bool


def target_of(
    outcome: Outcome, handoffs: list[ScoreSnapshot], model: str, window_ms: int
) -> ScoreSnapshot | None:
    """The handoff of `model` that `outcome` counts toward, by a scan."""
    best: ScoreSnapshot | None = None
    first: ScoreSnapshot | None = None
    for h in handoffs:
        if h.model != model:
            continue
        assert h.handoff_ms is not None and h.handoff_id is not None
        key = (h.handoff_ms, h.handoff_id)
        if first is None or key < (first.handoff_ms, first.handoff_id):
            first = h
        if h.handoff_ms <= outcome.time_ms and (
            best is None or key > (best.handoff_ms, best.handoff_id)
        ):
            best = h
    if best is not None:
        return best
    if (
        first is not None
        and first.handoff_ms is not None
        and first.handoff_ms - outcome.time_ms <= window_ms
    ):
        return first
    return None


def facts_of(handoff: ScoreSnapshot, mine: list[Outcome], rules: OutcomeRules) -> HandoffFacts:
    """The stages of one handoff from the outcomes attributed to it."""
    assert handoff.handoff_ms is not None
    touch_types = {"first_touch", "opportunity_created", "won", "lost"}
    touched = [o.time_ms for o in mine if o.type.value in touch_types]
    opened = [o.time_ms for o in mine if o.type.value in {"opportunity_created", "won", "lost"}]
    verdict = None
    verdict_key: tuple[int, int, str] | None = None
    rejection_reason = None
    for o in mine:
        if o.type.value in ("sales_accepted", "sales_rejected"):
            key = (o.time_ms, 1 if o.type is OutcomeType.SALES_REJECTED else 0, o.outcome_id)
            if verdict_key is None or key > verdict_key:
                verdict_key = key
                verdict = "rejected" if key[1] else "accepted"
                rejection_reason = reason_label("rejected", o.reason) if key[1] else None
    close = None
    close_key: tuple[int, int, str] | None = None
    loss_reason = None
    for o in mine:
        if o.type.value in ("won", "lost"):
            key = (o.time_ms, 1 if o.type is OutcomeType.WON else 0, o.outcome_id)
            if close_key is None or key > close_key:
                close_key = key
                close = "won" if key[1] else "lost"
                loss_reason = None if key[1] else reason_label("lost", o.reason)
    deadline = rules.sla_deadline_ms(handoff.tier, handoff.handoff_ms)
    touched_ms = min(touched) if touched else None
    return HandoffFacts(
        snapshot=handoff,
        outcomes=mine,
        touched_ms=touched_ms,
        opportunity_ms=min(opened) if opened else None,
        verdict=verdict,
        rejection_reason=rejection_reason,
        close=close,
        close_ms=close_key[0] if close_key else None,
        loss_reason=loss_reason,
        sales_first=any(o.time_ms < handoff.handoff_ms for o in mine),
        deadline_ms=deadline,
        met=deadline is not None and touched_ms is not None and touched_ms <= deadline,
    )


def reference(
    leads: dict[str, tuple[list[ScoreSnapshot], list[Outcome]]],
    rules: OutcomeRules,
    deliveries: int,
) -> tuple[Counter[str], list[HandoffFacts]]:
    """The counters every lead's facts add up to once all SLA deadlines have passed."""
    counters: Counter[str] = Counter()
    all_facts: list[HandoffFacts] = []
    distinct = 0
    for handoffs, outcomes in leads.values():
        distinct += len(outcomes)
        models = sorted({h.model for h in handoffs})
        for o in outcomes:
            targets = [
                t for m in models if (t := target_of(o, handoffs, m, rules.attribution_window_ms))
            ]
            if not targets:
                counters[global_field("unattributed", o.type.value)] += 1
        for h in handoffs:
            mine = [
                o
                for o in outcomes
                if target_of(o, handoffs, h.model, rules.attribution_window_ms) is h
            ]
            facts = facts_of(h, mine, rules)
            all_facts.append(facts)
            _count(counters, facts, rules)
    if deliveries > distinct:
        counters[global_field("duplicates")] = deliveries - distinct
    return counters, all_facts


def _count(counters: Counter[str], f: HandoffFacts, rules: OutcomeRules) -> None:
    h = f.snapshot
    assert h.handoff_ms is not None
    band = band_label(h.score, rules.band_edges, rules.fine_bands)

    def add(metric: str, *labels: str) -> None:
        counters[field(h.model, h.rules_version, metric, *labels)] += 1

    add("handoffs", h.tier)
    add("band_handoffs", band)
    reached = []
    if f.verdict:
        reached.append(f.verdict)
    if f.touched_ms is not None:
        reached.append("touched")
    if f.opportunity_ms is not None:
        reached.append("opportunity")
    if f.close:
        reached.append(f.close)
    for stage in reached:
        add("stage", h.tier, stage)
        add("band_stage", band, stage)
    if f.verdict == "rejected":
        add("rejected_reason", f.rejection_reason or "unspecified")
    if f.close == "lost":
        add("lost_reason", f.loss_reason or "unspecified")
    if f.sales_first:
        add("sales_first", h.tier)
    for metric, at in (("t_touch", f.touched_ms), ("t_opportunity", f.opportunity_ms),
                       ("t_close", f.close_ms)):  # fmt: skip
        if at is not None:
            add(metric, h.tier, time_bucket((at - h.handoff_ms) / 1000))
    if f.deadline_ms is not None:
        add("sla_due", h.tier)
        add("sla_met" if f.met else "sla_missed", h.tier)


def exact_percentile(values: list[float], q: float) -> float:
    """The q-quantile of raw values, linear between order statistics (numpy's default)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
