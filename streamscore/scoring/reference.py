"""Reference lead-state arithmetic: brute force over every award, the oracle of scoring/state.py.

scoring/state.py applies the same rules incrementally (and store/scripts/*.lua, until the worker
switches to it). This module keeps every award and recomputes sums from scratch, so it is slow
but obviously correct, and the parity and property tests compare the two.

Semantics, in one place:
- Positive points decay with the half-life, by event time; negative points (penalties) do not,
  unless the rules say `decay.penalties: true`: then they decay with the same half-life.
- A rule's cap limits the points it grants per fixed window of event time. A capped rule
  remembers its windows from (the newest window it has granted in) - CAP_WINDOWS_KEPT on; an
  award in an older window earns nothing from that rule, so the incremental state can forget
  older windows without ever granting one twice.
- A lead is evaluated at t = max(latest evaluation time, event time): a late event adds its
  decayed points but is judged at the lead's present.
- Tiers have hysteresis: enter at `enter`, leave below `exit`. Drops caused by inactivity happen
  at the exact millisecond the decaying score falls below `exit` (the "due" time).
- Handoff fires when the lead is qualified (handoff tier or above, grade and BANT gates, not
  disqualified) while armed; it disarms, and re-arms once the score falls below `rearm_below`.
- Profile attributes and the event-level disqualify flag are last-writer-wins by event time.
- Reasons: the top TOP_REASONS rules by points at the time of the output, points (rounded to
  REASON_DECIMALS) descending, then rule id ascending: state.top_reasons, shared.
- With decaying penalties, a fading net penalty raises the score between events, but tiers
  still rise only when an event is applied; inactivity only ever drops a tier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from streamscore.scoring.engine import DISQUALIFY, Decision
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import CompiledRules
from streamscore.scoring.state import CAP_WINDOWS_KEPT, top_reasons


@dataclass
class AttributeValue:
    """Last-writer-wins value of one profile attribute."""

    time_ms: int
    value: str
    fit_points: float
    bant_mask: int
    disqualify: bool
    reasons: tuple[tuple[str, float], ...]


@dataclass
class LeadState:
    """Everything known about one lead, kept in full."""

    lead_id: str
    awards: list[tuple[int, int, float]] = field(default_factory=list)  # (time, rule, points)
    caps_used: dict[tuple[int, int], float] = field(default_factory=dict)  # (rule, window)
    attributes: dict[int, AttributeValue] = field(default_factory=dict)
    flag: tuple[int, int] | None = None  # (time, DISQUALIFY | REQUALIFY)
    seen: dict[str, int] = field(default_factory=dict)  # event id -> event time
    tier: int = 0
    armed: bool = True
    seq: int = 0
    last_ms: int | None = None


def engagement_at(state: LeadState, rules: CompiledRules, t_ms: int) -> float:
    """Decayed positive points at t_ms."""
    h_ms = rules.half_life_s * 1000.0
    return sum(p * math.pow(2.0, (ti - t_ms) / h_ms) for ti, _, p in state.awards if p > 0)


def penalty_at(state: LeadState, rules: CompiledRules, t_ms: int) -> float:
    """Sum of negative points at t_ms: constant, or decayed when decay.penalties is set."""
    if not rules.decay_penalties:
        return sum(p for _, _, p in state.awards if p < 0)
    h_ms = rules.half_life_s * 1000.0
    return sum(p * math.pow(2.0, (ti - t_ms) / h_ms) for ti, _, p in state.awards if p < 0)


def fit_points(state: LeadState) -> float:
    """Sum of fit points over the current attribute values."""
    return sum(a.fit_points for a in state.attributes.values())


def bant_mask(state: LeadState) -> int:
    """BANT criteria met by any current attribute value, as a bit mask."""
    mask = 0
    for a in state.attributes.values():
        mask |= a.bant_mask
    return mask


def disqualified(state: LeadState) -> bool:
    """Disqualified by an event flag or by an attribute value."""
    by_event = state.flag is not None and state.flag[1] == DISQUALIFY
    return by_event or any(a.disqualify for a in state.attributes.values())


def score_at(state: LeadState, rules: CompiledRules, t_ms: int) -> float:
    """The score tiers are judged on, clamped to floor and ceiling."""
    base = fit_points(state) if rules.basis == "total" else 0.0
    raw = base + engagement_at(state, rules, t_ms) + penalty_at(state, rules, t_ms)
    return min(max(raw, rules.floor), rules.ceiling)


def reasons_at(state: LeadState, rules: CompiledRules, t_ms: int) -> tuple[tuple[str, float], ...]:
    """Top contributing rules at t_ms, ranked by state.top_reasons."""
    h_ms = rules.half_life_s * 1000.0
    by_rule: dict[str, float] = {}
    for ti, rule, p in state.awards:
        decays = p > 0 or rules.decay_penalties
        worth = p * math.pow(2.0, (ti - t_ms) / h_ms) if decays else p
        by_rule[rules.rule_ids[rule]] = by_rule.get(rules.rule_ids[rule], 0.0) + worth
    for a in state.attributes.values():
        for rule_id, p in a.reasons:
            by_rule[rule_id] = by_rule.get(rule_id, 0.0) + p
    return top_reasons(by_rule.items())


def due_ms(state: LeadState, rules: CompiledRules) -> int | None:
    """When inactivity alone drops the lead out of its tier, or None if it never does.

    The decaying part is the positive points, plus the penalties when they decay; a drop is due
    only while it is positive.
    """
    if state.tier == 0 or state.last_ms is None:
        return None
    base = fit_points(state) if rules.basis == "total" else 0.0
    e = engagement_at(state, rules, state.last_ms)
    if rules.decay_penalties:
        e += penalty_at(state, rules, state.last_ms)
    else:
        base += penalty_at(state, rules, state.last_ms)
    gap = rules.tiers[state.tier].exit - base
    if e <= 0 or gap <= 0:
        return None
    # log(x)/log(2), not log2: the Lua script has no log2 and parity wants the same rounding.
    t_star = state.last_ms + rules.half_life_s * 1000.0 * (math.log(e / gap) / math.log(2.0))
    return max(math.floor(t_star) + 1, state.last_ms + 1)


def _evaluate(
    state: LeadState,
    rules: CompiledRules,
    t_ms: int,
    cause: Literal["event", "decay"],
    event_id: str | None,
    event_ms: int,
) -> list[Output]:
    outputs: list[Output] = []
    s = score_at(state, rules, t_ms)
    before = state.tier
    new = state.tier
    for i in range(len(rules.tiers) - 1, state.tier, -1):
        if s >= rules.tiers[i].enter:
            new = i
            break
    if new == state.tier:
        while new > 0 and s < rules.tiers[new].exit:
            new -= 1
    fit = fit_points(state)
    grade = rules.grade_of(fit)
    mask = bant_mask(state)

    def emit(kind: Literal["handoff", "tier_change"], old: int) -> None:
        state.seq += 1
        outputs.append(
            Output(
                kind=kind,
                lead_id=state.lead_id,
                seq=state.seq,
                old_tier=rules.tiers[old].name,
                new_tier=rules.tiers[state.tier].name,
                score=s,
                engagement=engagement_at(state, rules, t_ms),
                fit=fit,
                grade=grade,
                bant_mask=mask,
                reasons=reasons_at(state, rules, t_ms),
                event_id=event_id,
                time_ms=event_ms,
                cause=cause,
                rules_version=rules.version,
            )
        )

    if new != state.tier:
        old, state.tier = state.tier, new
        emit("tier_change", old)
    if s < rules.rearm_below:
        state.armed = True
    qualified = (
        state.tier >= rules.handoff_tier
        and grade <= rules.min_grade
        and mask.bit_count() >= rules.min_bant
        and not disqualified(state)
    )
    if qualified and state.armed:
        state.armed = False
        emit("handoff", before)
    return outputs


def advance(state: LeadState, rules: CompiledRules, until_ms: int) -> list[Output]:
    """Apply every inactivity tier drop due at or before until_ms."""
    outputs: list[Output] = []
    while (due := due_ms(state, rules)) is not None and due <= until_ms:
        state.last_ms = due
        outputs += _evaluate(state, rules, due, "decay", None, due)
    return outputs


def apply_event(
    state: LeadState,
    rules: CompiledRules,
    event_id: str,
    time_ms: int,
    decision: Decision,
    dedup_window_ms: int,
) -> list[Output] | None:
    """Apply one event; None when its id was already seen within the dedup window."""
    if dedup_window_ms > 0:
        seen_at = state.seen.get(event_id)
        if (
            seen_at is not None
            and state.last_ms is not None
            and (seen_at >= state.last_ms - dedup_window_ms)
        ):
            return None
        # An id seen only before the window counts as new, and its time is refreshed.
        state.seen[event_id] = time_ms
    t_eval = time_ms if state.last_ms is None else max(state.last_ms, time_ms)
    outputs = advance(state, rules, t_eval) if state.last_ms is not None else []
    if not state.armed and score_at(state, rules, t_eval) < rules.rearm_below:
        state.armed = True
    for rule_index, points in decision.awards:
        rule = rules.engagement[rule_index]
        granted = points
        if points > 0 and rule.cap_points:
            window = time_ms // int(rule.cap_window_s * 1000)
            granted_in = [w for r, w in state.caps_used if r == rule_index]
            if granted_in and window < max(granted_in) - CAP_WINDOWS_KEPT:
                continue
            used = state.caps_used.get((rule_index, window), 0.0)
            granted = min(points, rule.cap_points - used)
            if granted <= 0:
                continue
            state.caps_used[(rule_index, window)] = used + granted
        state.awards.append((time_ms, rule_index, granted))
    for update in decision.attributes:
        current = state.attributes.get(update.attribute)
        if current is None or (time_ms, update.value) >= (current.time_ms, current.value):
            state.attributes[update.attribute] = AttributeValue(
                time_ms,
                update.value,
                update.fit_points,
                update.bant_mask,
                update.disqualify,
                update.reasons,
            )
    if decision.flag and (
        state.flag is None
        or (time_ms, decision.flag == DISQUALIFY)
        >= (
            state.flag[0],
            state.flag[1] == DISQUALIFY,
        )
    ):
        state.flag = (time_ms, decision.flag)
    state.last_ms = t_eval
    outputs += _evaluate(state, rules, t_eval, "event", event_id, time_ms)
    return outputs
