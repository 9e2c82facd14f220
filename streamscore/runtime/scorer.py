"""Applies one record to one cached lead: a scoring event, a sales outcome, or a tick.

The pipeline hands every record of a batch, in merge order, to the method of its kind; each
appends what it causes to the lead's key group's share of the batch (GroupWork): outputs
(handoffs, tier changes), records for other topics (SLA breaches), KPI counter deltas. All of it
is committed with the lead in one atomic call, so an outcome's attribution, its counters and
its effects happen exactly once in effect, like a score.

A handoff also opens the lead's funnel (outcomes/funnel.py): its snapshot is what later
outcomes are attributed to, and its tier's first-touch SLA starts. The SLA clock, like the decay
tick's "now" while the worker is behind, is the event time applied in the lead's partition, so
a replay breaches exactly what live processing did.
"""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass, field

from streamscore.events.envelope import Event
from streamscore.events.outputs import output_id
from streamscore.outcomes.events import Outcome
from streamscore.outcomes.funnel import (
    EMPTY,
    Effect,
    Recycle,
    ScoreSnapshot,
    SlaBreach,
    apply_outcome,
    check_sla,
    from_wire,
    record_handoff,
    to_wire,
)
from streamscore.outcomes.kpi import DEFAULT_MODEL
from streamscore.outcomes.messages import sla_breach_message
from streamscore.runtime.leads import CachedLead
from streamscore.scoring import story
from streamscore.scoring.engine import decide
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import CompiledRules
from streamscore.scoring.state import (
    LeadState,
    advance,
    apply_event,
    disarm,
    penalize,
    score_at,
)
from streamscore.scoring.story import StoryKind
from streamscore.store.outbox import Record

#: The penalty rule a `subtract` recycle books its points under (shown in explanations).
RECYCLE_RULE = "sales_rejected"


@dataclass(slots=True)
class GroupWork:
    """One key group's share of a batch while it is scored."""

    leads: dict[str, CachedLead] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)
    #: Messages for other topics, recorded in the outbox with the outputs.
    records: list[Record] = field(default_factory=list)
    #: KPI counter increments, applied in the same commit call.
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Facts:
    """What a batch did beyond scoring, counted once its commit calls have succeeded."""

    outcomes: Tally[tuple[str, str]] = field(default_factory=Tally)  # (type, result)
    breaches: Tally[str] = field(default_factory=Tally)  # tier


class Scorer:
    """The per-record rules of the worker, shared by batches and ticks."""

    def __init__(self, dedup_window_ms: int, story_keep: int, sla_topic: str) -> None:
        self.dedup_ms = dedup_window_ms
        self.story_keep = story_keep
        self.sla_topic = sla_topic

    def event(
        self,
        lead: CachedLead,
        ev: Event,
        clock_ms: int,
        w: GroupWork,
        rules: CompiledRules,
        facts: Facts,
    ) -> bool:
        """Score one event; False when its id was seen within the dedup window."""
        state = lead.state
        first = len(w.outputs)
        fresh = apply_event(
            state, rules, ev.event_id, ev.time_ms, decide(ev, rules), self.dedup_ms, w.outputs
        )
        if fresh:
            self._tell(state, rules, ev.time_ms, "event", ev.type)
            if len(w.outputs) > first:
                self._after_outputs(lead, w, first, rules, clock_ms, facts)
        return fresh

    def outcome(
        self,
        lead: CachedLead,
        outcome: Outcome,
        clock_ms: int,
        w: GroupWork,
        rules: CompiledRules,
        facts: Facts,
    ) -> None:
        """Attribute one sales outcome to the lead's handoffs, once; apply its effects."""
        state = lead.state
        funnel = from_wire(state.funnel) if state.funnel else EMPTY
        known = state.last_ms is not None  # an outcome may come for a lead never scored
        snapshot = self._snapshot(state, rules) if known else None
        after, deltas, effects = apply_outcome(funnel, outcome, snapshot, rules.outcomes, clock_ms)
        duplicate = after.duplicates > funnel.duplicates
        overflow = after.overflow > funnel.overflow
        facts.outcomes[
            (
                outcome.type.value,
                "duplicate" if duplicate else "overflow" if overflow else "applied",
            )
        ] += 1
        state.funnel = to_wire(after) or None
        _add(w.counters, deltas)
        if not duplicate:
            self._tell(state, rules, outcome.time_ms, "outcome", outcome.type.value)
        self._effects(lead, effects, outcome.outcome_id, w, rules, clock_ms, facts)

    def tick(
        self,
        lead: CachedLead,
        until_ms: int,
        w: GroupWork,
        rules: CompiledRules,
        facts: Facts,
    ) -> None:
        """Inactivity drops due by `until_ms`, and SLA breaches due by then."""
        state = lead.state
        first = len(w.outputs)
        advance(state, rules, until_ms, w.outputs)
        if len(w.outputs) > first:
            self._after_outputs(lead, w, first, rules, until_ms, facts)
        if state.funnel:
            funnel = from_wire(state.funnel)
            after, deltas, effects = check_sla(funnel, rules.outcomes, until_ms)
            if after is not funnel:
                state.funnel = to_wire(after) or None
                _add(w.counters, deltas)
                self._effects(lead, effects, "", w, rules, until_ms, facts)

    # ------------------------------------------------------------------ shared

    def _after_outputs(
        self,
        lead: CachedLead,
        w: GroupWork,
        first: int,
        rules: CompiledRules,
        clock_ms: int,
        facts: Facts | None,
    ) -> None:
        """Tell the new outputs, and open the funnel of each handoff among them."""
        state = lead.state
        for out in w.outputs[first:]:
            if self.story_keep:
                kind: StoryKind = (
                    "handoff"
                    if out.kind == "handoff"
                    else "decay"
                    if out.cause == "decay"
                    else "tier"
                )
                story.record(state, out.time_ms, kind, out.new_tier, out.score, self.story_keep)
            if out.kind != "handoff":
                continue
            snapshot = ScoreSnapshot(
                out.score, out.new_tier, out.grade, out.bant_mask, out.rules_version,
                DEFAULT_MODEL, output_id(out.lead_id, out.seq), out.time_ms,
            )  # fmt: skip
            funnel = from_wire(state.funnel) if state.funnel else EMPTY
            after, deltas, effects = record_handoff(
                funnel, snapshot, rules.outcomes, max(clock_ms, out.time_ms)
            )
            state.funnel = to_wire(after) or None
            _add(w.counters, deltas)
            self._effects(lead, effects, "", w, rules, clock_ms, facts)

    def _effects(
        self,
        lead: CachedLead,
        effects: tuple[Effect, ...],
        cause_id: str,
        w: GroupWork,
        rules: CompiledRules,
        clock_ms: int,
        facts: Facts | None,
    ) -> None:
        state = lead.state
        for effect in effects:
            if isinstance(effect, SlaBreach):
                key, value = sla_breach_message(state.lead_id, effect, clock_ms)
                w.records.append(Record(self.sla_topic, key, value))
                if facts is not None:
                    facts.breaches[effect.tier] += 1
                self._tell(state, rules, clock_ms, "sla", effect.tier)
            elif isinstance(effect, Recycle):
                self._recycle(lead, effect, cause_id, w, rules, clock_ms, facts)

    def _recycle(
        self,
        lead: CachedLead,
        effect: Recycle,
        cause_id: str,
        w: GroupWork,
        rules: CompiledRules,
        clock_ms: int,
        facts: Facts | None,
    ) -> None:
        state = lead.state
        if effect.action == "disarm":
            disarm(state, effect.rearm_below)
        else:
            first = len(w.outputs)
            penalize(state, rules, RECYCLE_RULE, effect.points, effect.time_ms, cause_id, w.outputs)
            if len(w.outputs) > first:
                self._after_outputs(lead, w, first, rules, clock_ms, facts)
        self._tell(state, rules, effect.time_ms, "recycle", effect.action)

    def _tell(
        self, state: LeadState, rules: CompiledRules, time_ms: int, kind: StoryKind, label: str
    ) -> None:
        if self.story_keep:
            last = state.last_ms if state.last_ms is not None else time_ms
            story.record(state, time_ms, kind, label, score_at(state, rules, last), self.story_keep)

    @staticmethod
    def _snapshot(state: LeadState, rules: CompiledRules) -> ScoreSnapshot:
        last = state.last_ms if state.last_ms is not None else 0
        tier = rules.tiers[min(state.tier, len(rules.tiers) - 1)].name
        return ScoreSnapshot(
            score_at(state, rules, last), tier, rules.grade_of(state.fit), state.bant,
            rules.version, DEFAULT_MODEL,
        )  # fmt: skip


def _add(total: dict[str, int], deltas: dict[str, int]) -> None:
    for name, n in deltas.items():
        if n:
            total[name] = total.get(name, 0) + n
