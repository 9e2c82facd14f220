"""Production lead state and its incremental arithmetic (decay, caps, tiers, handoffs, dedup).

A port of store/scripts/lead.lua + apply_batch.lua + tick.lua to Python, with three deliberate
changes (cap-window retention, decay.penalties, the reasons tie-break). scoring/reference.py is
the oracle: it keeps every award and recomputes from scratch, its docstring states the
semantics, and property tests hold the two to the same outputs.

How the incremental form works:
- Decaying points are kept normalised to an anchor time: an award of p points at t adds
  p·2^((t - anchor)/half-life), so the decayed sum at any time T is the stored sum times
  2^((anchor - T)/half-life), one multiplication whatever the number of awards.
- The totals (`positive`, and `negative` when penalties decay) are anchored at the newest
  decaying award (`anchor_ms`): each newer award first decays the total to its own time, then
  adds its points at par. The score at an award's time is then summed as the reference sums it
  (older points decayed, new ones exact), so 20 fit + 25 fresh points is 45.0, not 44.99...,
  and a tier threshold of 45 is met. lead.lua anchored the totals at the first award, where
  p·2^x·2^-x need not round back to p.
- The per-rule points, read only for reasons and explanations, keep one anchor
  (`points_anchor_ms`) and are rescaled only before 2^x can overflow: an award more than
  REANCHOR_HALF_LIVES half-lives after it (as lead.lua does for every normalised field).
- Penalties are a plain sum, unless the rules say `decay.penalties: true`; then they are
  normalised like positive points, and the decaying part of the score is positive + negative.
- Points are also kept per rule id (not rule index), so a rules reload that reorders rules keeps
  each rule's points for explanations and reasons.
- A state pays only for what the rules use: no capped rule, no cap table; no profile attribute,
  no profile; no dedup window, no seen ids.

Every function here is pure: no I/O, no clock. The hot path (apply_event) binds locals, builds
nothing per event but the outputs it emits, and leaves the rare cases to helper functions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from streamscore.scoring.engine import DISQUALIFY, NO_FLAG, AttributeUpdate, Decision
from streamscore.scoring.outputs import Cause, Output, OutputKind
from streamscore.scoring.rules import CompiledRules, EngagementRule

if TYPE_CHECKING:  # it imports this module
    from streamscore.scoring.identity import Identity

#: A capped rule remembers its windows from (the newest window it has granted in) minus this
#: many on; an award in an older window earns nothing from that rule. Bounding the table per
#: rule bounds the state, and refusing (rather than forgetting) an old window means a late event
#: can never be granted a pruned window's points a second time.
CAP_WINDOWS_KEPT = 8
#: Re-anchor the normalised sums before 2^x overflows: 2^500 * points stays far below 1.8e308.
REANCHOR_HALF_LIVES = 500.0
#: Reasons carried by an output: the top rules by points.
TOP_REASONS = 3
#: Reasons rank by points rounded to this many decimals (what an output publishes), then by rule
#: id. Ranking the raw floats let rounding decide: the incremental sums here and the reference's
#: per-award sums differ in the last bits, and far past the points anchor the decay factor alone
#: underflows to 0.0 while the reference still has 3e-289 for one rule, so two rules both worth
#: nothing ranked in a different order on each side.
REASON_DECIMALS = 6
#: A score this far (relative) above its tier's exit at t is not due to drop by t: due_ms's
#: rounding is orders of magnitude smaller. Nearer than that, due_ms itself decides.
DUE_MARGIN = 1e-6
#: Seen event ids are trimmed to the dedup window this many times per window of event time
#: (at most 1 + 1/n windows of ids kept). Each trim is a pass over a lead's ids and, when it
#: drops some, a new table to write out: 8 cost 1.8 us an event more than 1 on the simple job.
SEEN_TRIMS_PER_WINDOW = 1

_LN2 = math.log(2.0)
_pow = math.pow
_blake2b = hashlib.blake2b


#: One story item (scoring/story.py): time, kind index, label, score in tenths.
StoryRow = tuple[int, int, str, int]


class ProfileRecord(NamedTuple):
    """Last-writer-wins value of one profile attribute, with what it is worth."""

    time_ms: int
    value: str
    fit_points: float
    bant_mask: int
    disqualify: bool
    reasons: tuple[tuple[str, float], ...]  # (fit rule id, points)


@dataclass(slots=True)
class LeadState:
    """One lead's scoring state, incremental: what the worker caches and the codec stores.

    Read functions (score_at, due_ms, ...) take the state as the last apply_event or advance
    left it; those two first adopt a state written under other rules (tier count, penalty mode).
    """

    lead_id: str
    #: Time of the newest decaying award, which the totals are normalised to; None before one.
    anchor_ms: int | None = None
    #: Positive points, normalised to anchor_ms.
    positive: float = 0.0
    #: Penalties (<= 0): a plain sum, or normalised to anchor_ms when penalties_decay.
    negative: float = 0.0
    #: Time the per-rule points are normalised to; set with anchor_ms, moved only rarely.
    points_anchor_ms: int | None = None
    #: The lead's present: the latest time it was judged at (max of event times and due times).
    last_ms: int | None = None
    tier: int = 0
    armed: bool = True
    #: Outputs emitted so far; an output's id derives from (lead id, seq).
    seq: int = 0
    #: Event-level flag (engine.NO_FLAG, DISQUALIFY or REQUALIFY) and the event time that set it.
    flag: int = NO_FLAG
    flag_ms: int | None = None
    #: Derived from the profile: fit points, disqualified by an attribute, BANT mask.
    fit: float = 0.0
    fit_disqualify: bool = False
    bant: int = 0
    #: Version of the rules the state was last adopted by.
    rules_version: str | None = None
    #: How `negative` and `penalties` are stored (see `negative`); follows rules.decay_penalties.
    penalties_decay: bool = False
    #: Rule id -> positive points, normalised to points_anchor_ms.
    points: dict[str, float] = field(default_factory=dict)
    #: Rule id -> penalties (normalised to points_anchor_ms when penalties_decay); None until the
    #: first penalty.
    penalties: dict[str, float] | None = None
    #: Rule id -> {cap window index: points granted in it}; None unless a capped rule granted.
    caps: dict[str, dict[int, float]] | None = None
    #: Attribute name -> current record; None until the first attribute value.
    profile: dict[str, ProfileRecord] | None = None
    #: event_id_hash(event id) -> event time, for ids within the dedup window; None if unused.
    #: Only ever grown by adding an id; any other change (a refreshed time, a trim) replaces
    #: the table, so an encoder can tell what was added since it last wrote it (store/codec.py).
    seen: dict[int, int] | None = None
    #: The lead's home input partition number, when the runtime records it.
    partition: int | None = None
    #: Its last notable moments, (time, kind index, label, score in tenths) (scoring/story.py).
    story: list[StoryRow] | None = None
    #: Re-arm only below this score (set when sales rejected the lead and the rules say to
    #: disarm it), instead of the rules' rearm_below; cleared when it re-arms.
    rearm_below: float | None = None
    #: Its handoffs and sales outcomes (outcomes/funnel.py's wire form); None until the first.
    funnel: list[Any] | None = None
    #: Only ever seen under a Segment anonymousId (no userId): mergeable into a known lead.
    anonymous: bool = False
    #: Its links to other ids (scoring/identity.py); None for a lead never merged or linked.
    identity: Identity | None = None
    #: Its account (scoring/accounts.py): (account id, from a group call); None without one.
    account: tuple[str, bool] | None = None
    #: Stored fields this version does not know, kept as decoded so a round trip loses nothing.
    extra: dict[str, Any] | None = None


def new_lead(lead_id: str) -> LeadState:
    """A lead never seen before."""
    return LeadState(lead_id)


def clone(state: LeadState) -> LeadState:
    """A copy that shares nothing mutable with `state` (to judge a lead without changing it)."""
    caps = state.caps
    return LeadState(
        state.lead_id,
        state.anchor_ms,
        state.positive,
        state.negative,
        state.points_anchor_ms,
        state.last_ms,
        state.tier,
        state.armed,
        state.seq,
        state.flag,
        state.flag_ms,
        state.fit,
        state.fit_disqualify,
        state.bant,
        state.rules_version,
        state.penalties_decay,
        dict(state.points),
        None if state.penalties is None else dict(state.penalties),
        None if caps is None else {rule: dict(used) for rule, used in caps.items()},
        None if state.profile is None else dict(state.profile),
        None if state.seen is None else dict(state.seen),
        state.partition,
        None if state.story is None else list(state.story),
        state.rearm_below,
        None if state.funnel is None else list(state.funnel),
        state.anonymous,
        None if state.identity is None else state.identity.copy(),
        state.account,
        None if state.extra is None else dict(state.extra),
    )


def event_id_hash(event_id: str) -> int:
    """Stable 64-bit hash of an event id, the key of LeadState.seen.

    BLAKE2b, not hash(): Python salts str hashes per process, and the state outlives processes.
    Two distinct ids of one lead collide with probability about n²/2^65 for n ids in the window.
    """
    try:
        raw = event_id.encode()
    except UnicodeEncodeError:  # a lone surrogate: still a distinct, stable id
        raw = event_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(_blake2b(raw, digest_size=8).digest(), "big")


# ------------------------------------------------------------------ reads


def engagement_at(state: LeadState, rules: CompiledRules, t_ms: int) -> float:
    """Decayed positive points at t_ms."""
    anchor = state.anchor_ms
    if anchor is None:
        return 0.0
    return state.positive * _pow(2.0, (anchor - t_ms) / (rules.half_life_s * 1000.0))


def penalty_at(state: LeadState, rules: CompiledRules, t_ms: int) -> float:
    """Sum of penalties at t_ms: constant, or decayed when penalties decay."""
    anchor = state.anchor_ms
    if not state.penalties_decay or anchor is None:
        return state.negative
    return state.negative * _pow(2.0, (anchor - t_ms) / (rules.half_life_s * 1000.0))


def score_at(state: LeadState, rules: CompiledRules, t_ms: int) -> float:
    """The score tiers are judged on, clamped to floor and ceiling."""
    # Summed in the reference's order, (fit + engagement) + penalties: the same rounding.
    raw = state.fit if rules.basis == "total" else 0.0
    anchor = state.anchor_ms
    if anchor is None:
        raw += state.negative
    else:
        # Judged at its newest award's time (most events): no decay, and no pow to compute it.
        factor = (
            1.0 if anchor == t_ms else _pow(2.0, (anchor - t_ms) / (rules.half_life_s * 1000.0))
        )
        raw += state.positive * factor
        raw += state.negative * factor if state.penalties_decay else state.negative
    if raw < rules.floor:
        return rules.floor
    if raw > rules.ceiling:
        return rules.ceiling
    return raw


def contributions_at(state: LeadState, rules: CompiledRules, t_ms: int) -> list[tuple[str, float]]:
    """Every rule's points at t_ms (engagement decayed, penalties, fit), in no particular order."""
    anchor = state.points_anchor_ms
    factor = 0.0 if anchor is None else _pow(2.0, (anchor - t_ms) / (rules.half_life_s * 1000.0))
    by_rule = {rule: value * factor for rule, value in state.points.items()}
    if state.penalties:
        scale = factor if state.penalties_decay else 1.0
        for rule, value in state.penalties.items():
            by_rule[rule] = by_rule.get(rule, 0.0) + value * scale
    if state.profile:
        for record in state.profile.values():
            for rule, value in record.reasons:
                by_rule[rule] = by_rule.get(rule, 0.0) + value
    return list(by_rule.items())


def _ranking(item: tuple[str, float]) -> tuple[float, str]:
    return -round(item[1], REASON_DECIMALS), item[0]


def top_reasons(contributions: Iterable[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """The TOP_REASONS (rule id, points) pairs: points rounded to REASON_DECIMALS descending,
    then rule id ascending. The one ranking of reasons, for this module and the reference."""
    return tuple(sorted(contributions, key=_ranking)[:TOP_REASONS])


def reasons_at(state: LeadState, rules: CompiledRules, t_ms: int) -> tuple[tuple[str, float], ...]:
    """Top contributing rules at t_ms, ranked by top_reasons."""
    return top_reasons(contributions_at(state, rules, t_ms))


def disqualified(state: LeadState) -> bool:
    """Disqualified by the event flag or by a current attribute value."""
    return state.flag == DISQUALIFY or state.fit_disqualify


def due_ms(state: LeadState, rules: CompiledRules) -> int | None:
    """When inactivity alone drops the lead out of its tier, or None if it never does.

    Exact to the millisecond: the first ms at which the decaying score is below the tier's exit.
    With decaying penalties the decaying part is positive + negative; a drop is due only while
    it is positive (a net penalty fading away raises the score, and tiers rise only on events).
    """
    tier = state.tier
    last = state.last_ms
    anchor = state.anchor_ms
    if tier == 0 or last is None or anchor is None:
        return None
    h_ms = rules.half_life_s * 1000.0
    factor = _pow(2.0, (anchor - last) / h_ms)
    now = state.positive * factor
    base = state.fit if rules.basis == "total" else 0.0
    if state.penalties_decay:
        now += state.negative * factor
    else:
        base += state.negative
    gap = rules.tiers[tier].exit - base
    if now <= 0 or gap <= 0:
        return None
    # log(x)/log(2), as lead.lua and the reference: the same rounding, the same millisecond.
    t_star = last + h_ms * (math.log(now / gap) / _LN2)
    return max(math.floor(t_star) + 1, last + 1)


# ------------------------------------------------------------------ changes


def apply_event(
    state: LeadState,
    rules: CompiledRules,
    event_id: str,
    time_ms: int,
    decision: Decision,
    dedup_window_ms: int,
    out: list[Output],
) -> bool:
    """Apply one event, appending its outputs to `out`; False (nothing changed) for a duplicate.

    A duplicate is an id seen at or after last_ms - dedup_window_ms. The lead is judged at
    max(last_ms, time_ms): due inactivity drops first, then the event's points at its own time.
    """
    last = state.last_ms
    if dedup_window_ms > 0:
        seen_key = event_id_hash(event_id)
        seen = state.seen
        if seen is None:
            state.seen = {seen_key: time_ms}
        else:
            seen_at = seen.get(seen_key)
            if seen_at is None:
                seen[seen_key] = time_ms
            elif last is not None and seen_at >= last - dedup_window_ms:
                return False
            else:
                # An id seen only before the window counts as new, and its time is refreshed
                # (in a new table: see LeadState.seen).
                state.seen = {**seen, seen_key: time_ms}
    if state.rules_version != rules.version or state.penalties_decay is not rules.decay_penalties:
        _adopt(state, rules)
    t_eval = time_ms
    if last is not None:
        if time_ms < last:
            t_eval = last
        tier = state.tier
        if tier or not state.armed:
            # Points do not change between evaluations, so this score at t_eval serves both
            # the due-drop test and re-arming, before and after any drop.
            s = score_at(state, rules, t_eval)
            if tier:
                exit_ = rules.tiers[tier].exit
                # Well above the exit at t_eval, no drop can be due by then: skip the exact
                # due_ms (a log). Within the margin, due_ms decides, as in the reference.
                if s - exit_ <= DUE_MARGIN * (abs(exit_) + 1.0):
                    _advance(state, rules, t_eval, out)
            if not state.armed and s < _rearm_level(state, rules):
                state.armed = True
                state.rearm_below = None
    awards = decision.awards
    if awards:
        h_ms = rules.half_life_s * 1000.0
        engagement = rules.engagement
        for rule_index, points in awards:
            rule = engagement[rule_index]
            if points <= 0:
                _add_penalty(state, rule.id, points, time_ms, h_ms)
                continue
            granted = _capped(state, rule, points, time_ms) if rule.cap_points else points
            if granted <= 0:
                continue
            # Inlined _add_decaying (positive): most events award points, few are penalties.
            anchor = state.anchor_ms
            if anchor is None:
                state.anchor_ms = state.points_anchor_ms = time_ms
                state.positive = weight = granted
            else:
                if time_ms > anchor:
                    factor = _pow(2.0, (anchor - time_ms) / h_ms)
                    state.positive = state.positive * factor + granted
                    if state.penalties_decay:
                        state.negative *= factor
                    state.anchor_ms = time_ms
                else:
                    state.positive += granted * _pow(2.0, (time_ms - anchor) / h_ms)
                points_anchor = state.points_anchor_ms
                assert points_anchor is not None  # set with anchor_ms
                if (time_ms - points_anchor) / h_ms > REANCHOR_HALF_LIVES:
                    _reanchor_points(state, time_ms, h_ms)
                    points_anchor = time_ms
                weight = granted * _pow(2.0, (time_ms - points_anchor) / h_ms)
            by_rule = state.points
            by_rule[rule.id] = by_rule.get(rule.id, 0.0) + weight
    if decision.attributes:
        _set_attributes(state, rules, decision.attributes, time_ms)
    flag = decision.flag
    if flag:
        flag_ms = state.flag_ms
        # Last writer by event time wins; at the same time, disqualification wins.
        if (
            flag_ms is None
            or time_ms > flag_ms
            or (time_ms == flag_ms and (flag == DISQUALIFY or state.flag != DISQUALIFY))
        ):
            state.flag = flag
            state.flag_ms = time_ms
    state.last_ms = t_eval
    _evaluate(state, rules, t_eval, "event", event_id, time_ms, out)
    if dedup_window_ms > 0:
        # Trimmed each time last_ms enters a new window (SEEN_TRIMS_PER_WINDOW).
        step = dedup_window_ms // SEEN_TRIMS_PER_WINDOW or 1
        if last is None or t_eval // step != last // step:
            _trim_seen(state, t_eval - dedup_window_ms)
    return True


def advance(state: LeadState, rules: CompiledRules, until_ms: int, out: list[Output]) -> None:
    """Apply every inactivity tier drop due at or before until_ms, appending them to `out`."""
    if state.rules_version != rules.version or state.penalties_decay is not rules.decay_penalties:
        _adopt(state, rules)
    _advance(state, rules, until_ms, out)


def _advance(state: LeadState, rules: CompiledRules, until_ms: int, out: list[Output]) -> None:
    while (due := due_ms(state, rules)) is not None and due <= until_ms:
        state.last_ms = due
        _evaluate(state, rules, due, "decay", None, due, out)


def _evaluate(
    state: LeadState,
    rules: CompiledRules,
    t_ms: int,
    cause: Cause,
    event_id: str | None,
    event_ms: int,
    out: list[Output],
) -> None:
    """Judge the lead at t_ms: tier with hysteresis, re-arming, handoff."""
    s = score_at(state, rules, t_ms)
    before = state.tier
    tiers = rules.tiers
    top = len(tiers) - 1
    # Enter and exit thresholds rise tier by tier (rules.cross_check), so the next tier up
    # decides whether any higher one can be entered, and the current exit whether to drop.
    if before < top and s >= tiers[before + 1].enter:
        new = before + 1
        while new < top and s >= tiers[new + 1].enter:
            new += 1
    elif before and s < tiers[before].exit:
        new = before - 1
        while new > 0 and s < tiers[new].exit:
            new -= 1
    else:
        new = before
    if new != before:
        state.tier = new
        _emit(state, rules, "tier_change", before, s, t_ms, event_id, event_ms, cause, out)
    if s < _rearm_level(state, rules):
        state.armed = True
        state.rearm_below = None
    if (
        state.armed
        and new >= rules.handoff_tier
        and state.bant.bit_count() >= rules.min_bant
        and not (state.flag == DISQUALIFY or state.fit_disqualify)
        and rules.grade_of(state.fit) <= rules.min_grade
    ):
        state.armed = False
        _emit(state, rules, "handoff", before, s, t_ms, event_id, event_ms, cause, out)


def _rearm_level(state: LeadState, rules: CompiledRules) -> float:
    override = state.rearm_below
    return rules.rearm_below if override is None else override


def disarm(state: LeadState, rearm_below: float) -> None:
    """No handoff until the score has fallen below `rearm_below` (or the rules' lower level)
    and risen again: what a sales rejection does under `outcomes.recycle.action: disarm`."""
    state.armed = False
    current = state.rearm_below
    state.rearm_below = rearm_below if current is None else min(current, rearm_below)


def penalize(
    state: LeadState,
    rules: CompiledRules,
    rule_id: str,
    points: float,
    time_ms: int,
    cause_id: str,
    out: list[Output],
) -> None:
    """Take `points` off the lead under `rule_id` at `time_ms` and judge it again (a tier may
    drop): what a sales rejection does under `outcomes.recycle.action: subtract`."""
    if state.rules_version != rules.version or state.penalties_decay is not rules.decay_penalties:
        _adopt(state, rules)
    _add_penalty(state, rule_id, -abs(points), time_ms, rules.half_life_s * 1000.0)
    last = state.last_ms
    t_eval = time_ms if last is None or time_ms > last else last
    state.last_ms = t_eval
    _evaluate(state, rules, t_eval, "event", cause_id, time_ms, out)


def _emit(
    state: LeadState,
    rules: CompiledRules,
    kind: OutputKind,
    old_tier: int,
    score: float,
    t_ms: int,
    event_id: str | None,
    event_ms: int,
    cause: Cause,
    out: list[Output],
) -> None:
    state.seq += 1
    tiers = rules.tiers
    out.append(
        Output(
            kind,
            state.lead_id,
            state.seq,
            tiers[old_tier].name,
            tiers[state.tier].name,
            score,
            engagement_at(state, rules, t_ms),
            state.fit,
            rules.grade_of(state.fit),
            state.bant,
            reasons_at(state, rules, t_ms),
            event_id,
            event_ms,
            cause,
            rules.version,
        )
    )


def _capped(state: LeadState, rule: EngagementRule, points: float, time_ms: int) -> float:
    """Points granted under the rule's cap (<= 0: none); records them in the window's table."""
    window = time_ms // int(rule.cap_window_s * 1000)
    caps = state.caps
    if caps is None:
        caps = state.caps = {}
    used_by_window = caps.get(rule.id)
    if used_by_window is None:
        used_by_window = caps[rule.id] = {}
    used = used_by_window.get(window)
    newest = window
    if used is None:
        used = 0.0
        if used_by_window:
            newest = max(used_by_window)
            if window < newest - CAP_WINDOWS_KEPT:
                # Older than the windows kept: it may have granted before and been pruned.
                return 0.0
    granted = min(points, rule.cap_points - used)
    if granted <= 0:
        return granted
    used_by_window[window] = used + granted
    if window > newest:
        oldest = window - CAP_WINDOWS_KEPT
        for old in [w for w in used_by_window if w < oldest]:
            del used_by_window[old]
    return granted


def _add_penalty(state: LeadState, rule_id: str, points: float, time_ms: int, h_ms: float) -> None:
    penalties = state.penalties
    if penalties is None:
        penalties = state.penalties = {}
    if state.penalties_decay:
        points = _add_decaying(state, points, time_ms, h_ms, negative=True)
    else:
        state.negative += points
    penalties[rule_id] = penalties.get(rule_id, 0.0) + points


def _add_decaying(
    state: LeadState, points: float, time_ms: int, h_ms: float, negative: bool
) -> float:
    """Add decaying points at time_ms to a total; return their per-rule normalised weight."""
    anchor = state.anchor_ms
    if anchor is None:
        state.anchor_ms = state.points_anchor_ms = time_ms
        if negative:
            state.negative = points
        else:
            state.positive = points
        return points
    if time_ms > anchor:
        factor = _pow(2.0, (anchor - time_ms) / h_ms)
        state.positive *= factor
        if state.penalties_decay:
            state.negative *= factor
        state.anchor_ms = time_ms
        weight = points
    else:
        weight = points * _pow(2.0, (time_ms - anchor) / h_ms)
    if negative:
        state.negative += weight
    else:
        state.positive += weight
    points_anchor = state.points_anchor_ms
    assert points_anchor is not None  # set with anchor_ms
    if (time_ms - points_anchor) / h_ms > REANCHOR_HALF_LIVES:
        _reanchor_points(state, time_ms, h_ms)
        points_anchor = time_ms
    return points * _pow(2.0, (time_ms - points_anchor) / h_ms)


def _reanchor_points(state: LeadState, t_ms: int, h_ms: float) -> None:
    """Move the per-rule anchor to t_ms, rescaling every per-rule number by the same factor."""
    assert state.points_anchor_ms is not None
    factor = _pow(2.0, (state.points_anchor_ms - t_ms) / h_ms)
    points = state.points
    for rule in points:
        points[rule] *= factor
    if state.penalties_decay and state.penalties:
        penalties = state.penalties
        for rule in penalties:
            penalties[rule] *= factor
    state.points_anchor_ms = t_ms


def _set_attributes(
    state: LeadState, rules: CompiledRules, updates: tuple[AttributeUpdate, ...], time_ms: int
) -> None:
    """Last writer by event time wins (then the greater value); fit, BANT and dq follow."""
    profile = state.profile
    if profile is None:
        profile = state.profile = {}
    attributes = rules.attributes
    changed = False
    for u in updates:
        name = attributes[u.attribute].name
        current = profile.get(name)
        if (
            current is None
            or time_ms > current.time_ms
            or (time_ms == current.time_ms and u.value >= current.value)
        ):
            profile[name] = ProfileRecord(
                time_ms, u.value, u.fit_points, u.bant_mask, u.disqualify, u.reasons
            )
            changed = True
    if changed:
        fit, mask, dq = 0.0, 0, False
        for record in profile.values():
            fit += record.fit_points
            mask |= record.bant_mask
            dq = dq or record.disqualify
        state.fit, state.bant, state.fit_disqualify = fit, mask, dq


def _trim_seen(state: LeadState, oldest_ms: int) -> None:
    """Forget ids last seen before oldest_ms (= last_ms - dedup window).

    They can never matter again: last_ms never decreases, so an id seen before
    last_ms - window fails the duplicate test now and forever after, and a forgotten id and an
    expired one are treated alike (new, its time recorded). Run when last_ms enters a new
    window (SEEN_TRIMS_PER_WINDOW), not per event. A later, longer
    window cannot bring trimmed ids back (as with the Lua script's ZREMRANGEBYSCORE).
    """
    seen = state.seen
    if seen and min(seen.values()) < oldest_ms:  # min in C: mostly nothing to trim
        kept = {k: t for k, t in seen.items() if t >= oldest_ms}
        if len(kept) < len(seen):
            # A new table (see LeadState.seen); none when empty: stored, None and empty are
            # one thing.
            state.seen = kept or None


def _adopt(state: LeadState, rules: CompiledRules) -> None:
    """Bring a state last judged under other rules (or none) in line with these.

    A reload may remove tiers (the tier is clamped, as lead.lua does) or switch
    decay.penalties: penalties then change form at the lead's present (last_ms), so the score
    is continuous there: decayed penalties freeze at their current value, fixed ones start to
    decay from it.
    """
    state.tier = min(state.tier, len(rules.tiers) - 1)
    if state.penalties_decay is not rules.decay_penalties:
        last = state.last_ms
        if last is not None and (state.negative or state.penalties):
            _convert_penalties(state, last, rules.half_life_s * 1000.0, rules.decay_penalties)
        state.penalties_decay = rules.decay_penalties
    state.rules_version = rules.version


def _convert_penalties(state: LeadState, last: int, h_ms: float, decaying: bool) -> None:
    """Re-express the penalties, fixed <-> normalised, keeping their value at `last`."""
    anchor = state.anchor_ms
    if anchor is None:
        state.anchor_ms = state.points_anchor_ms = anchor = last
    points_anchor = state.points_anchor_ms
    assert points_anchor is not None  # set with anchor_ms
    if decaying:
        # Anchor the totals at `last`, where the fixed sum is its own normalised value.
        state.positive *= _pow(2.0, (anchor - last) / h_ms)
        state.anchor_ms = last
        if (last - points_anchor) / h_ms > REANCHOR_HALF_LIVES:
            _reanchor_points(state, last, h_ms)  # penalties are still fixed: left alone
            points_anchor = last
        per_rule = _pow(2.0, (last - points_anchor) / h_ms)
    else:
        state.negative *= _pow(2.0, (anchor - last) / h_ms)
        per_rule = _pow(2.0, (points_anchor - last) / h_ms)
    if state.penalties:
        penalties = state.penalties
        for rule in penalties:
            penalties[rule] *= per_rule
