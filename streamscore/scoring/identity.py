"""Identity merge: an anonymous lead's history joins the known lead it turned out to be; pure.

The protocol (runtime/scorer.py drives it; every step is one record applied by the worker that
owns the lead it is keyed by, so no step ever touches two leads at once):

1. The known lead K sees an alias, or an identify carrying both ids, naming A: `request`
   records A in K's links and the runtime sends merge_into(A -> K), keyed by A.
2. A's owner judges the request (`judge`): A must be anonymous (only ever seen under a Segment
   anonymousId), or the settings must allow merging known leads; not merged elsewhere; not
   one of K's own absorbers (a cycle). Granted, `detach` takes A's contributions out of A and
   marks A as merged into K; the runtime sends absorb(A's contributions), keyed by K.
3. K's owner applies it (`absorb`), once: the ids absorbed are remembered.
4. Events for A that arrive later find A merged and are forwarded, keyed by K.

What an absorb merges, and how:
- Decaying points: both sums are normalised to an anchor time, so re-expressing each at the
  later anchor and adding them is the sum of every award decayed from its own time: decay stays
  exact. Fixed penalties add. The per-rule points merge the same way.
- Cap windows: the windows each id used are added, per rule and window, up to the rule's cap;
  points each id earned before the merge are kept, so a window both ids used before the merge
  may hold more than its cap once (nothing is taken back), and later awards in it earn nothing.
- Profile attributes: the later value wins (at the same time the greater value), as for events.
- The event-level disqualify flag: the later one wins (disqualification at a tie).
- Seen event ids: the union, so a tracker retry under either id is still a duplicate.
- Not merged: A's handoffs and sales funnel (they stay A's history), its story, its tier and
  arming (K is judged afresh right after the merge: cause "merge", the linking event as trigger).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from streamscore.scoring.engine import DISQUALIFY
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import CompiledRules
from streamscore.scoring.state import (
    CAP_WINDOWS_KEPT,
    LeadState,
    _adopt,
    _advance,
    _evaluate,
    _pow,
    _rearm_level,
    clone,
    score_at,
)

#: What became of a merge request at the known lead (K) or at the id to merge (A).
RequestResult = Literal["requested", "linked", "refused_limit"]
Judgement = Literal["merge", "duplicate", "refused_known", "refused_taken", "refused_cycle"]


@dataclass(slots=True)
class Identity:
    """A lead's links to other ids (LeadState.identity)."""

    #: This id was merged into that lead: its later events are forwarded there.
    merged_into: str | None = None
    #: Ids this lead asked to absorb (merge_into sent) -> time of the linking event.
    links: dict[str, int] = field(default_factory=dict)
    #: Ids absorbed into this lead -> time of the linking event; an absorb applies once.
    merged: dict[str, int] = field(default_factory=dict)

    def copy(self) -> Identity:
        """A copy that shares nothing mutable."""
        return Identity(self.merged_into, dict(self.links), dict(self.merged))

    def __bool__(self) -> bool:
        return bool(self.merged_into or self.links or self.merged)


def _identity(state: LeadState) -> Identity:
    ident = state.identity
    if ident is None:
        ident = state.identity = Identity()
    return ident


def note_event(state: LeadState, anonymous: bool) -> None:
    """Keep `state.anonymous`: set by a first event under an anonymousId, cleared for good by
    any event under a userId. Call before the event is applied (last_ms tells a first one)."""
    if not anonymous:
        state.anonymous = False
    elif state.last_ms is None and not state.identity:
        state.anonymous = True


def known(state: LeadState) -> bool:
    """Seen under a userId (or absorbed ids, which only a known lead does)."""
    seen = state.last_ms is not None and not state.anonymous
    return seen or bool(state.identity and state.identity.merged)


def request(state: LeadState, other: str, time_ms: int, max_links: int) -> RequestResult:
    """K links `other` (an alias, an identify with both ids): whether to send merge_into.

    `linked`: asked before (or already absorbed), nothing to send; `refused_limit`: K has
    `max_links` ids linked or absorbed already.
    """
    ident = state.identity
    if ident is not None:
        if other in ident.links or other in ident.merged:
            return "linked"
        if len(ident.links) + len(ident.merged) >= max_links:
            return "refused_limit"
    _identity(state).links[other] = time_ms
    return "requested"


def judge(state: LeadState, into: str, allow_known: bool) -> Judgement:
    """A's owner: may A (this state) merge into `into`?"""
    ident = state.identity
    if ident is not None and ident.merged_into is not None:
        return "duplicate" if ident.merged_into == into else "refused_taken"
    if into == state.lead_id or (ident is not None and into in ident.merged):
        return "refused_cycle"
    if known(state) and not allow_known:
        return "refused_known"
    return "merge"


def detach(state: LeadState, into: str) -> LeadState:
    """Take A's contributions out of A (returned) and mark A as merged into `into`.

    A keeps its id, output sequence (output ids derive from it), home partition, story, funnel
    and anonymity; its score is gone, so it leaves the tier indexes and due sets.
    """
    taken = clone(state)
    taken.identity = taken.story = taken.funnel = taken.extra = None
    taken.partition = None
    ident = state.identity.copy() if state.identity is not None else Identity()
    ident.merged_into = into
    ident.links.clear()
    fresh = LeadState(state.lead_id)
    fresh.seq = state.seq
    fresh.partition = state.partition
    fresh.story = state.story
    fresh.funnel = state.funnel
    fresh.extra = state.extra
    fresh.anonymous = state.anonymous
    fresh.rules_version = state.rules_version
    fresh.penalties_decay = state.penalties_decay
    fresh.identity = ident
    for name in LeadState.__slots__:
        setattr(state, name, getattr(fresh, name))
    return taken


def absorb(
    state: LeadState,
    other: LeadState,
    from_id: str,
    rules: CompiledRules,
    event_id: str,
    event_ms: int,
    out: list[Output],
) -> bool:
    """Merge `other` (A's detached contributions) into K's state, once; False if done before.

    K is judged at max(its present, A's): drops due by then first (as for an event), then the
    merged score, with cause "merge" and the linking event as trigger.
    """
    ident = _identity(state)
    if from_id in ident.merged:
        return False
    ident.merged[from_id] = event_ms
    ident.links.pop(from_id, None)
    for s in (state, other):
        if s.rules_version != rules.version or s.penalties_decay is not rules.decay_penalties:
            _adopt(s, rules)
    last = state.last_ms
    times = [t for t in (last, other.last_ms) if t is not None]
    t_eval = max(times) if times else event_ms
    if last is not None:
        if state.tier:
            _advance(state, rules, t_eval, out)
        if not state.armed and score_at(state, rules, t_eval) < _rearm_level(state, rules):
            state.armed = True
            state.rearm_below = None
    h_ms = rules.half_life_s * 1000.0
    _merge_points(state, other, h_ms)
    _merge_caps(state, other, rules)
    _merge_profile(state, other)
    _merge_flag(state, other)
    if other.seen:
        seen = state.seen if state.seen is not None else {}
        for key, t in other.seen.items():
            if t > seen.get(key, t - 1):
                seen[key] = t
        state.seen = seen
    state.last_ms = t_eval
    _evaluate(state, rules, t_eval, "merge", event_id, event_ms, out)
    return True


def _merge_points(state: LeadState, other: LeadState, h_ms: float) -> None:
    decaying = state.penalties_decay
    # Totals: both re-expressed at the later anchor, then added.
    oa = other.anchor_ms
    if oa is not None:
        sa = state.anchor_ms
        if sa is None:
            state.anchor_ms = oa
            state.positive = other.positive
            if decaying:
                state.negative = other.negative  # decaying penalties set the anchor: none here
        else:
            a = max(sa, oa)
            fs = 1.0 if sa == a else _pow(2.0, (sa - a) / h_ms)
            fo = 1.0 if oa == a else _pow(2.0, (oa - a) / h_ms)
            state.positive = state.positive * fs + other.positive * fo
            if decaying:
                state.negative = state.negative * fs + other.negative * fo
            state.anchor_ms = a
    if not decaying:
        state.negative += other.negative
    # Per rule: the same, at the later per-rule anchor.
    opa = other.points_anchor_ms
    fo = 1.0
    if opa is not None:
        spa = state.points_anchor_ms
        pa = opa if spa is None else max(spa, opa)
        if spa is not None and spa != pa:
            fs = _pow(2.0, (spa - pa) / h_ms)
            for rule in state.points:
                state.points[rule] *= fs
            if decaying and state.penalties:
                for rule in state.penalties:
                    state.penalties[rule] *= fs
        state.points_anchor_ms = pa
        fo = 1.0 if opa == pa else _pow(2.0, (opa - pa) / h_ms)
        for rule, value in other.points.items():
            state.points[rule] = state.points.get(rule, 0.0) + value * fo
    if other.penalties:
        penalties = state.penalties if state.penalties is not None else {}
        scale = fo if decaying else 1.0
        for rule, value in other.penalties.items():
            penalties[rule] = penalties.get(rule, 0.0) + value * scale
        state.penalties = penalties


def _merge_caps(state: LeadState, other: LeadState, rules: CompiledRules) -> None:
    if not other.caps:
        return
    cap_of = {rule.id: rule.cap_points for rule in rules.engagement if rule.cap_points}
    caps = state.caps if state.caps is not None else {}
    for rule, windows in other.caps.items():
        mine = caps.setdefault(rule, {})
        cap = cap_of.get(rule)
        for window, used in windows.items():
            total = mine.get(window, 0.0) + used
            mine[window] = total if cap is None else min(total, cap)
        if mine:
            oldest = max(mine) - CAP_WINDOWS_KEPT
            for window in [w for w in mine if w < oldest]:
                del mine[window]
    state.caps = {rule: windows for rule, windows in caps.items() if windows} or None


def _merge_profile(state: LeadState, other: LeadState) -> None:
    if not other.profile:
        return
    profile = state.profile if state.profile is not None else {}
    changed = False
    for name, theirs in other.profile.items():
        mine = profile.get(name)
        if mine is None or (theirs.time_ms, theirs.value) > (mine.time_ms, mine.value):
            profile[name] = theirs
            changed = True
    state.profile = profile
    if changed:
        fit, mask, dq = 0.0, 0, False
        for record in profile.values():
            fit += record.fit_points
            mask |= record.bant_mask
            dq = dq or record.disqualify
        state.fit, state.bant, state.fit_disqualify = fit, mask, dq


def _merge_flag(state: LeadState, other: LeadState) -> None:
    flag_ms = other.flag_ms
    if not other.flag or flag_ms is None:
        return
    mine = state.flag_ms
    if (
        mine is None
        or flag_ms > mine
        or (flag_ms == mine and (other.flag == DISQUALIFY or state.flag != DISQUALIFY))
    ):
        state.flag = other.flag
        state.flag_ms = flag_ms
