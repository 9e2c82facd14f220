"""Per-lead funnel state: the lead's handoffs and sales outcomes, attribution, SLA clock, effects.

A Funnel keeps the facts (each handoff with its scoring snapshot, each distinct outcome), and
everything else is a pure function of those facts: which handoff an outcome counts toward, the
stages each handoff reached, its KPI counters. The counter deltas of a change are the lead's
counters after it minus before it, so the sum of deltas over any arrival order of the same facts
is the same (order independence), and a fact seen again changes nothing but the duplicate count
(idempotence). The engine applies a Funnel change in the same atomic commit as the lead state.

Attribution (per model: each model's handoffs form their own timeline):
- an outcome counts toward the latest handoff at or before its CRM time;
- an outcome earlier than every handoff counts toward the first handoff if that came at most
  `attribution_window` later (a rep who calls a lead before it turns hot); until such a handoff
  is known (and past the window, for good) it is `unattributed`; an outcome for a lead streamscore
  has never scored is just that: stored, and attributed if the lead is handed off in time;
- a handoff that arrives later than outcomes it should take takes them over: the deltas move
  them (negative on the old place, positive on the new).

Stages of a handoff, from the outcomes attributed to it:
- touched at the earliest first_touch, opportunity_created, won or lost (a deal cannot be created
  or closed without contact); opportunity at the earliest opportunity_created, won or lost (won
  and lost are deal outcomes, so `won` before `opportunity_created` implies an opportunity);
- the sales verdict is the latest sales_accepted / sales_rejected (a later accept overrides an
  earlier reject, and the other way round; a tie goes to the rejection); the close is the latest
  won / lost (a deal re-opened and won overrides its loss; a tie goes to won);
- times are measured from the handoff; an outcome before the handoff counts as 0 (the first
  histogram bucket) and marks the handoff `sales_first`; a first touch before the handoff meets
  its SLA.

SLA: a handoff at a tier with a deadline (rules `outcomes.sla`) is met when its first touch is at
or before the deadline. Once the clock (the partition's event time) is past the deadline with no
such touch known, check_sla marks it breached and emits one SlaBreach effect; a breach is never
emitted twice. A touch that arrives later with an earlier CRM time still makes it `met` in the
KPIs (the breach event has been sent: `sla_breaches` counts events, `sla_missed` settled misses).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from streamscore.outcomes.events import Outcome, OutcomeType
from streamscore.outcomes.kpi import (
    DEFAULT_MODEL,
    band_label,
    field,
    global_field,
    reason_label,
    time_bucket,
)
from streamscore.scoring.outcome_rules import OutcomeRules

#: Distinct outcomes kept per lead; later ones are counted in `overflow` and otherwise ignored.
MAX_OUTCOMES: Final = 64
#: Handoffs kept per lead (all models); later ones are counted in `overflow` and ignored.
MAX_HANDOFFS: Final = 32

_TOUCH: Final = frozenset(
    {OutcomeType.FIRST_TOUCH, OutcomeType.OPPORTUNITY_CREATED, OutcomeType.WON, OutcomeType.LOST}
)
_OPPORTUNITY: Final = frozenset(
    {OutcomeType.OPPORTUNITY_CREATED, OutcomeType.WON, OutcomeType.LOST}
)
_VERDICT_RANK: Final = {OutcomeType.SALES_ACCEPTED: 0, OutcomeType.SALES_REJECTED: 1}
_CLOSE_RANK: Final = {OutcomeType.LOST: 0, OutcomeType.WON: 1}
# Outcomes that make an earlier rejection stale: sales has moved on.
_SUPERSEDES_REJECTION: Final = frozenset(
    {OutcomeType.SALES_ACCEPTED, OutcomeType.SALES_REJECTED, *_OPPORTUNITY}
)


@dataclass(frozen=True, slots=True)
class ScoreSnapshot:
    """The lead's scoring state at one moment, as the engine sees it."""

    score: float
    tier: str
    grade: int  # 1 = A ... 4 = D
    bant_mask: int
    rules_version: str
    model: str = DEFAULT_MODEL
    handoff_id: str | None = None  # the lead's last handoff, if any
    handoff_ms: int | None = None
    #: Each rule's points at that moment, decayed to it (what `streamscore learn` learns from).
    features: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class HandoffRecord:
    """A handoff and the snapshot it was made with: what its outcomes are attributed to."""

    handoff_id: str
    time_ms: int
    model: str
    rules_version: str
    tier: str
    score: float
    grade: int
    bant_mask: int
    band: str  # kpi.band_label of the score under the rules of the handoff
    deadline_ms: int | None  # first-touch SLA deadline, None when the tier has none
    inferred: bool = False  # rebuilt from a later snapshot (handoff older than the funnel)
    #: Each rule's points at the handoff (empty for a handoff recorded without them).
    features: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """What the funnel keeps of one outcome."""

    outcome_id: str
    type: OutcomeType
    time_ms: int
    reason: str | None = None  # kpi.reason_label for rejections and losses
    amount: float | None = None
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class Funnel:
    """One lead's handoffs (by time) and distinct outcomes (by time), and what has been emitted."""

    handoffs: tuple[HandoffRecord, ...] = ()
    outcomes: tuple[OutcomeRecord, ...] = ()
    breached: frozenset[str] = frozenset()  # handoff ids whose SLA breach has been emitted
    duplicates: int = 0
    overflow: int = 0


EMPTY: Final = Funnel()


@dataclass(frozen=True, slots=True)
class Stages:
    """What a handoff's lead reached, with first times (ms) and amounts; None: not reached."""

    touched_ms: int | None
    opportunity_ms: int | None
    verdict: Literal["accepted", "rejected"] | None
    verdict_ms: int | None
    rejection_reason: str | None
    close: Literal["won", "lost"] | None
    close_ms: int | None
    loss_reason: str | None
    opportunity_amount: float | None
    won_amount: float | None
    sales_first: bool


@dataclass(frozen=True, slots=True)
class SlaBreach:
    """Effect: emit one SLA-breach event for this handoff (the engine adds the lead id)."""

    handoff_id: str
    model: str
    rules_version: str
    tier: str
    handoff_ms: int
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class Recycle:
    """Effect: sales rejected the lead; apply the rules' recycle action to its scoring state.

    `disarm`: no handoff until the score has fallen below `rearm_below` and risen again;
    `subtract`: take `points` off the score as a penalty (shown in the lead's explanation as
    the rule id `sales_rejected`).
    """

    outcome_id: str
    time_ms: int
    action: Literal["disarm", "subtract"]
    points: float
    rearm_below: float
    reason: str


Effect = SlaBreach | Recycle
Deltas = dict[str, int]


# ---------------------------------------------------------------- transitions


def record_handoff(
    funnel: Funnel, snapshot: ScoreSnapshot, rules: OutcomeRules, now_ms: int
) -> tuple[Funnel, Deltas, tuple[Effect, ...]]:
    """Add a handoff (snapshot.handoff_id / handoff_ms set) as the engine emits it."""
    if snapshot.handoff_id is None or snapshot.handoff_ms is None:
        raise ValueError("record_handoff needs a snapshot with handoff_id and handoff_ms")
    if any(h.handoff_id == snapshot.handoff_id for h in funnel.handoffs):
        return funnel, {}, ()
    if len(funnel.handoffs) >= MAX_HANDOFFS:
        return replace(funnel, overflow=funnel.overflow + 1), {global_field("overflow"): 1}, ()
    after = _with_handoff(funnel, _handoff_record(snapshot, rules, inferred=False))
    after, breaches = _breach_due(after, rules, now_ms)
    return after, diff(funnel, after, rules), breaches


def apply_outcome(
    funnel: Funnel,
    outcome: Outcome,
    snapshot: ScoreSnapshot | None,
    rules: OutcomeRules,
    now_ms: int,
) -> tuple[Funnel, Deltas, tuple[Effect, ...]]:
    """Apply one outcome; `snapshot` is the lead's scoring state now (None: lead unknown)."""
    if any(o.outcome_id == outcome.outcome_id for o in funnel.outcomes):
        # The first copy wins, whatever this one says.
        after = replace(funnel, duplicates=funnel.duplicates + 1)
        return after, {global_field("duplicates"): 1}, ()
    if len(funnel.outcomes) >= MAX_OUTCOMES:
        return replace(funnel, overflow=funnel.overflow + 1), {global_field("overflow"): 1}, ()
    after = funnel
    if (
        snapshot is not None
        and snapshot.handoff_id is not None
        and snapshot.handoff_ms is not None
        and not any(h.handoff_id == snapshot.handoff_id for h in funnel.handoffs)
        and len(funnel.handoffs) < MAX_HANDOFFS
    ):
        # A handoff made before the funnel existed (outcomes switched on later): rebuilt from
        # today's snapshot, the best there is, and flagged as such.
        after = _with_handoff(after, _handoff_record(snapshot, rules, inferred=True))
    record = OutcomeRecord(
        outcome.outcome_id,
        outcome.type,
        outcome.time_ms,
        _reason(outcome),
        outcome.amount,
        outcome.currency,
    )
    keys = [(o.time_ms, o.outcome_id) for o in after.outcomes]
    at = bisect.bisect(keys, (record.time_ms, record.outcome_id))
    after = replace(after, outcomes=(*after.outcomes[:at], record, *after.outcomes[at:]))
    after, effects = _breach_due(after, rules, now_ms)
    recycle = _recycle(after, record, snapshot, rules)
    if recycle is not None:
        effects = (*effects, recycle)
    return after, diff(funnel, after, rules), effects


def check_sla(
    funnel: Funnel, rules: OutcomeRules, now_ms: int
) -> tuple[Funnel, Deltas, tuple[Effect, ...]]:
    """The SLA clock at `now_ms` (partition event time): breach every handoff now overdue."""
    after, breaches = _breach_due(funnel, rules, now_ms)
    if after is funnel:
        return funnel, {}, ()
    return after, diff(funnel, after, rules), breaches


def next_sla_due_ms(funnel: Funnel, rules: OutcomeRules) -> int | None:
    """The first time at which check_sla would emit a breach (deadline + 1 ms), or None."""
    due = [
        h.deadline_ms + 1
        for h in funnel.handoffs
        if h.deadline_ms is not None and breach_is_due(funnel, h, rules, h.deadline_ms + 1)
    ]
    return min(due, default=None)


def breach_is_due(funnel: Funnel, handoff: HandoffRecord, rules: OutcomeRules, t_ms: int) -> bool:
    """Whether a breach of `handoff` is due at t_ms: past its deadline (a touch at the deadline
    is in time), no touch known by then, and not emitted before."""
    deadline = handoff.deadline_ms
    if deadline is None or t_ms <= deadline or handoff.handoff_id in funnel.breached:
        return False
    touched = stages(funnel, handoff, rules).touched_ms
    return touched is None or touched > deadline


def expires_ms(funnel: Funnel, rules: OutcomeRules) -> int | None:
    """When a funnel without handoffs may be dropped (no handoff can take its outcomes any more);
    None while it has handoffs (it lives as long as the lead). Dropping writes no deltas."""
    if funnel.handoffs or not funnel.outcomes:
        return None
    return funnel.outcomes[-1].time_ms + rules.attribution_window_ms


# ---------------------------------------------------------------- attribution and counters


def attribute(funnel: Funnel, rules: OutcomeRules) -> dict[str, dict[str, HandoffRecord]]:
    """outcome id -> model -> the handoff it counts toward (absent: none of that model)."""
    out: dict[str, dict[str, HandoffRecord]] = {o.outcome_id: {} for o in funnel.outcomes}
    for model in {h.model for h in funnel.handoffs}:
        timeline = [h for h in funnel.handoffs if h.model == model]
        times = [h.time_ms for h in timeline]
        for o in funnel.outcomes:
            i = bisect.bisect_right(times, o.time_ms)
            if i:
                out[o.outcome_id][model] = timeline[i - 1]
            elif timeline[0].time_ms - o.time_ms <= rules.attribution_window_ms:
                out[o.outcome_id][model] = timeline[0]
    return out


def stages(funnel: Funnel, handoff: HandoffRecord, rules: OutcomeRules) -> Stages:
    """The stages the lead reached, counted toward `handoff`."""
    attributed = attribute(funnel, rules)
    mine = [
        o
        for o in funnel.outcomes
        if (h := attributed[o.outcome_id].get(handoff.model)) is not None
        and h.handoff_id == handoff.handoff_id
    ]
    return _stages(mine, handoff)


def _stages(mine: list[OutcomeRecord], handoff: HandoffRecord) -> Stages:
    touched = min((o.time_ms for o in mine if o.type in _TOUCH), default=None)
    opportunity = min((o.time_ms for o in mine if o.type in _OPPORTUNITY), default=None)
    verdicts = [o for o in mine if o.type in _VERDICT_RANK]
    verdict = max(
        verdicts, key=lambda o: (o.time_ms, _VERDICT_RANK[o.type], o.outcome_id), default=None
    )
    closes = [o for o in mine if o.type in _CLOSE_RANK]
    close = max(closes, key=lambda o: (o.time_ms, _CLOSE_RANK[o.type], o.outcome_id), default=None)
    opened = [o for o in mine if o.type is OutcomeType.OPPORTUNITY_CREATED]
    first_opened = min(opened, key=lambda o: (o.time_ms, o.outcome_id), default=None)
    return Stages(
        touched_ms=touched,
        opportunity_ms=opportunity,
        verdict=None if verdict is None else _verdict_name(verdict.type),
        verdict_ms=None if verdict is None else verdict.time_ms,
        rejection_reason=verdict.reason
        if verdict is not None and verdict.type is OutcomeType.SALES_REJECTED
        else None,
        close=None if close is None else "won" if close.type is OutcomeType.WON else "lost",
        close_ms=None if close is None else close.time_ms,
        loss_reason=close.reason if close is not None and close.type is OutcomeType.LOST else None,
        opportunity_amount=None if first_opened is None else first_opened.amount,
        won_amount=close.amount if close is not None and close.type is OutcomeType.WON else None,
        sales_first=any(o.time_ms < handoff.time_ms for o in mine),
    )


def _verdict_name(kind: OutcomeType) -> Literal["accepted", "rejected"]:
    return "rejected" if kind is OutcomeType.SALES_REJECTED else "accepted"


def contribution(funnel: Funnel, rules: OutcomeRules) -> Counter[str]:
    """This lead's share of every KPI counter: a pure function of its facts."""
    c: Counter[str] = Counter()
    if funnel.duplicates:
        c[global_field("duplicates")] = funnel.duplicates
    if funnel.overflow:
        c[global_field("overflow")] = funnel.overflow
    attributed = attribute(funnel, rules)
    per_handoff: dict[str, list[OutcomeRecord]] = {h.handoff_id: [] for h in funnel.handoffs}
    for o in funnel.outcomes:
        targets = attributed[o.outcome_id]
        if not targets:
            c[global_field("unattributed", o.type.value)] += 1
        for h in targets.values():
            per_handoff[h.handoff_id].append(o)
    for h in funnel.handoffs:
        _count_handoff(c, h, _stages(per_handoff[h.handoff_id], h), h.handoff_id in funnel.breached)
    return c


def _count_handoff(c: Counter[str], h: HandoffRecord, s: Stages, breached: bool) -> None:
    def add(metric: str, *labels: str) -> None:
        c[field(h.model, h.rules_version, metric, *labels)] += 1

    add("handoffs", h.tier)
    add("band_handoffs", h.band)
    reached = {
        "accepted": s.verdict == "accepted",
        "rejected": s.verdict == "rejected",
        "touched": s.touched_ms is not None,
        "opportunity": s.opportunity_ms is not None,
        "won": s.close == "won",
        "lost": s.close == "lost",
    }
    for stage, yes in reached.items():
        if yes:
            add("stage", h.tier, stage)
            add("band_stage", h.band, stage)
    if s.verdict == "rejected":
        add("rejected_reason", s.rejection_reason or "unspecified")
    if s.close == "lost":
        add("lost_reason", s.loss_reason or "unspecified")
    if s.sales_first:
        add("sales_first", h.tier)
    for metric, at in (
        ("t_touch", s.touched_ms),
        ("t_opportunity", s.opportunity_ms),
        ("t_close", s.close_ms),
    ):
        if at is not None:
            add(metric, h.tier, time_bucket((at - h.time_ms) / 1000))
    if h.deadline_ms is not None:
        add("sla_due", h.tier)
        if s.touched_ms is not None and s.touched_ms <= h.deadline_ms:
            add("sla_met", h.tier)
        elif breached:
            add("sla_missed", h.tier)
        if breached:
            add("sla_breaches", h.tier)


def diff(before: Funnel, after: Funnel, rules: OutcomeRules) -> Deltas:
    """The counter deltas that turn `before`'s contribution into `after`'s (zeros left out)."""
    old, new = contribution(before, rules), contribution(after, rules)
    return {k: d for k in old.keys() | new.keys() if (d := new[k] - old[k])}


# ---------------------------------------------------------------- helpers


def _handoff_record(snapshot: ScoreSnapshot, rules: OutcomeRules, inferred: bool) -> HandoffRecord:
    assert snapshot.handoff_id is not None and snapshot.handoff_ms is not None
    return HandoffRecord(
        handoff_id=snapshot.handoff_id,
        time_ms=snapshot.handoff_ms,
        model=snapshot.model,
        rules_version=snapshot.rules_version,
        tier=snapshot.tier,
        score=snapshot.score,
        grade=snapshot.grade,
        bant_mask=snapshot.bant_mask,
        band=band_label(snapshot.score, rules.band_edges, rules.fine_bands),
        # An inferred handoff predates the SLA clock: no deadline, so no breach for old news.
        deadline_ms=None if inferred else rules.sla_deadline_ms(snapshot.tier, snapshot.handoff_ms),
        inferred=inferred,
        features=snapshot.features,
    )


def _with_handoff(funnel: Funnel, record: HandoffRecord) -> Funnel:
    keys = [(h.time_ms, h.handoff_id) for h in funnel.handoffs]
    at = bisect.bisect(keys, (record.time_ms, record.handoff_id))
    return replace(funnel, handoffs=(*funnel.handoffs[:at], record, *funnel.handoffs[at:]))


def _breach_due(
    funnel: Funnel, rules: OutcomeRules, now_ms: int
) -> tuple[Funnel, tuple[Effect, ...]]:
    due = [h for h in funnel.handoffs if breach_is_due(funnel, h, rules, now_ms)]
    if not due:
        return funnel, ()
    breached = funnel.breached | {h.handoff_id for h in due}
    effects = tuple(
        SlaBreach(h.handoff_id, h.model, h.rules_version, h.tier, h.time_ms, h.deadline_ms or 0)
        for h in due
    )
    return replace(funnel, breached=breached), effects


def _recycle(
    funnel: Funnel, record: OutcomeRecord, snapshot: ScoreSnapshot | None, rules: OutcomeRules
) -> Recycle | None:
    policy = rules.recycle
    if policy is None or record.type is not OutcomeType.SALES_REJECTED or snapshot is None:
        return None
    # A rejection already overtaken (sales moved on, or the lead was handed off again since)
    # does not recycle the lead now.
    later = (
        o
        for o in funnel.outcomes
        if o.outcome_id != record.outcome_id and o.type in _SUPERSEDES_REJECTION
    )
    if any(o.time_ms > record.time_ms for o in later):
        return None
    if any(h.model == snapshot.model and h.time_ms > record.time_ms for h in funnel.handoffs):
        return None
    return Recycle(
        record.outcome_id,
        record.time_ms,
        policy.action,
        policy.points,
        policy.rearm_below,
        record.reason or "unspecified",
    )


def _reason(outcome: Outcome) -> str | None:
    if outcome.type is OutcomeType.SALES_REJECTED:
        return reason_label("rejected", outcome.reason)
    if outcome.type is OutcomeType.LOST:
        return reason_label("lost", outcome.reason)
    return None


# ---------------------------------------------------------------- wire form


def _handoff_from_wire(h: Sequence[Any]) -> HandoffRecord:
    # Features are an optional trailing field: records written before it have 11 fields.
    features = tuple((str(rule), float(points)) for rule, points in h[11]) if len(h) > 11 else ()
    return HandoffRecord(
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10], features
    )


def to_wire(funnel: Funnel) -> list[Any]:
    """The funnel as nested lists of str/int/float/None/bool (for MessagePack in the lead state);
    an empty funnel is an empty list, so the codec can leave it out."""
    if funnel == EMPTY:
        return []
    return [
        [
            [h.handoff_id, h.time_ms, h.model, h.rules_version, h.tier, h.score, h.grade,
             h.bant_mask, h.band, h.deadline_ms, h.inferred,
             *([[list(f) for f in h.features]] if h.features else [])]
            for h in funnel.handoffs
        ],
        [
            [o.outcome_id, o.type.value, o.time_ms, o.reason, o.amount, o.currency]
            for o in funnel.outcomes
        ],
        sorted(funnel.breached),
        funnel.duplicates,
        funnel.overflow,
    ]  # fmt: skip


def from_wire(data: Sequence[Any]) -> Funnel:
    """The inverse of to_wire; raises ValueError on a malformed value."""
    if not data:
        return EMPTY
    try:
        handoffs, outcomes, breached, duplicates, overflow = data
        return Funnel(
            handoffs=tuple(_handoff_from_wire(h) for h in handoffs),
            outcomes=tuple(OutcomeRecord(o[0], OutcomeType(o[1]), *o[2:]) for o in outcomes),
            breached=frozenset(breached),
            duplicates=int(duplicates),
            overflow=int(overflow),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a funnel: {exc}") from None
