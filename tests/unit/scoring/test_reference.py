"""Reference state model properties (decay, caps, tiers, handoffs, dedup) vs plain oracles."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings, target
from hypothesis import strategies as st

from streamscore.scoring.engine import DISQUALIFY, Decision, decide
from streamscore.scoring.outputs import Output
from streamscore.scoring.reference import (
    LeadState,
    advance,
    apply_event,
    bant_mask,
    disqualified,
    due_ms,
    engagement_at,
    fit_points,
    score_at,
)
from streamscore.scoring.rules import CompiledRules, parse_rules_text
from tests.scoring_support import PARITY_RULES_YAML, parity_rules

RULES = parity_rules()
CAP_TEXT = ", cap: {points: 9, window: 30m}"
assert CAP_TEXT in PARITY_RULES_YAML
UNCAPPED = parse_rules_text(PARITY_RULES_YAML.replace(CAP_TEXT, ""), "uncapped.yaml")
assert all(r.cap_points == 0 for r in UNCAPPED.engagement)

T0 = 1_760_000_000_000
MIN = 60_000
H_MS = RULES.half_life_s * 1000.0
DEDUP_MS = 10 * 86_400_000  # longer than any generated history: every repeat is a duplicate
VIEW = RULES.rule_ids.index("view")
CLICK = RULES.rule_ids.index("click")
assert RULES.engagement[VIEW].cap_points > 0 and RULES.engagement[CLICK].cap_points == 0


@dataclass(frozen=True)
class Ev:
    type: str
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    name: str | None = None


SHAPES = st.sampled_from(
    [
        Ev("page_view", {"path": "/blog"}),
        Ev("page_view", {"path": "/pricing"}),
        Ev("page_view", {"path": "/pricing"}),
        Ev("email_click"),
        Ev("trial_signup"),
        Ev("unsubscribe"),
        Ev("page_view", {"path": "/x"}, {"user_agent": "googlebot"}),
        Ev("identify", traits={"title": "VP Sales", "size": 900}),
        Ev("identify", traits={"title": "Chief Revenue Officer"}),
        Ev("trial_signup", traits={"title": "VP Marketing"}),
        Ev("identify", traits={"title": "Intern"}),
        Ev("identify", traits={"title": "competitor"}),
        Ev("identify", traits={"size": "120"}),
        Ev("identify", traits={"size": "1,500"}),
    ]
)
# (minutes since the previous step, minutes late, what happened, repeat an earlier event id?):
# bursts and quiet hours, so leads rise, decay, re-arm and rise again; some events arrive late.
STEPS = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 5, 30, 90, 240]),
        st.sampled_from([0, 0, 0, 10, 120]),
        SHAPES,
        st.booleans(),
    ),
    min_size=4,
    max_size=40,
)
DISTINCT = st.lists(st.tuples(st.integers(0, 600), SHAPES), min_size=1, max_size=25)


# ------------------------------------------------------------------ plain oracles


def oracle_gates(
    applied: list[tuple[int, Decision]], rules: CompiledRules
) -> tuple[float, int, int, bool]:
    """(fit, grade, BANT mask, disqualified) from the applied events, last writer by event time."""
    latest: dict[int, tuple[int, str, Any]] = {}
    flag: tuple[int, bool] | None = None
    for t, decision in applied:
        for u in decision.attributes:
            cur = latest.get(u.attribute)
            if cur is None or (t, u.value) >= cur[:2]:
                latest[u.attribute] = (t, u.value, u)
        if decision.flag:
            key = (t, decision.flag == DISQUALIFY)
            flag = key if flag is None or key >= flag else flag
    updates = [u for _, _, u in latest.values()]
    fit = sum(u.fit_points for u in updates)
    grade = 1 + sum(fit < threshold for threshold in rules.grade_thresholds)
    mask = 0
    for u in updates:
        mask |= u.bant_mask
    dq = (flag is not None and flag[1]) or any(u.disqualify for u in updates)
    return fit, grade, mask, dq


def oracle_score(applied: list[tuple[int, Decision]], rules: CompiledRules, t_ms: int) -> float:
    """Closed form for uncapped rules: fit + decayed positive points + penalties, clamped."""
    fit = oracle_gates(applied, rules)[0] if rules.basis == "total" else 0.0
    h_ms = rules.half_life_s * 1000.0
    positive = sum(
        p * 2.0 ** (-(t_ms - t) / h_ms) for t, d in applied for _, p in d.awards if p > 0
    )
    negative = sum(p for _, d in applied for _, p in d.awards if p < 0)
    return float(min(max(fit + positive + negative, rules.floor), rules.ceiling))


def award(rule: int, points: float) -> Decision:
    return Decision(((rule, points),), (), 0)


# ------------------------------------------------------------------ order independence and decay


@settings(max_examples=80, deadline=None)
@given(steps=DISTINCT, data=st.data())
def test_final_score_is_order_independent(steps: list[tuple[int, Ev]], data: st.DataObject) -> None:
    events = [
        (f"e{i}", T0 + m * MIN, decide(shape, UNCAPPED)) for i, (m, shape) in enumerate(steps)
    ]
    order = data.draw(st.permutations(range(len(events))))
    t_eval = max(t for _, t, _ in events) + data.draw(st.integers(0, 48 * 60)) * MIN
    in_time_order, permuted = LeadState("a"), LeadState("a")
    for event_id, t, decision in sorted(events, key=lambda e: e[1]):
        apply_event(in_time_order, UNCAPPED, event_id, t, decision, DEDUP_MS)
    for i in order:
        apply_event(permuted, UNCAPPED, *events[i], DEDUP_MS)
    expected = oracle_score([(t, d) for _, t, d in events], UNCAPPED, t_eval)
    for state in (in_time_order, permuted):
        assert math.isclose(score_at(state, UNCAPPED, t_eval), expected, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(fit_points(in_time_order), fit_points(permuted), rel_tol=1e-9)
    assert bant_mask(in_time_order) == bant_mask(permuted)
    assert disqualified(in_time_order) == disqualified(permuted)


@settings(max_examples=100, deadline=None)
@given(
    points=st.floats(0.01, 150),
    t0=st.integers(T0 - 10**9, T0 + 10**9),
    dt_ms=st.integers(0, 10 * 86_400_000),
)
def test_decay_is_exact(points: float, t0: int, dt_ms: int) -> None:
    state = LeadState("d")
    apply_event(state, RULES, "only", t0, award(CLICK, points), DEDUP_MS)
    expected = points * 2.0 ** (-dt_ms / H_MS)
    assert math.isclose(engagement_at(state, RULES, t0 + dt_ms), expected, rel_tol=1e-9)
    assert math.isclose(score_at(state, RULES, t0 + dt_ms), expected, rel_tol=1e-9)
    # one half-life halves it, exactly
    assert engagement_at(state, RULES, t0 + int(H_MS)) == points / 2


# ------------------------------------------------------------------ caps


@settings(max_examples=80, deadline=None)
@given(
    requests=st.lists(
        st.tuples(st.integers(0, 4 * 60 * MIN), st.floats(0.1, 12)), min_size=1, max_size=30
    )
)
def test_caps_grant_at_most_the_cap_per_window(requests: list[tuple[int, float]]) -> None:
    rule = RULES.engagement[VIEW]
    window_ms = int(rule.cap_window_s * 1000)
    state = LeadState("c")
    asked: dict[int, float] = {}
    for i, (offset, points) in enumerate(requests):
        t = T0 + offset
        apply_event(state, RULES, f"e{i}", t, award(VIEW, points), DEDUP_MS)
        asked[t // window_ms] = asked.get(t // window_ms, 0.0) + points
        granted: dict[int, float] = {}
        for at, index, got in state.awards:
            assert index == VIEW and got > 0
            granted[at // window_ms] = granted.get(at // window_ms, 0.0) + got
        for window, total in granted.items():
            assert total <= rule.cap_points * (1 + 1e-12)
            assert math.isclose(total, min(asked[window], rule.cap_points), rel_tol=1e-9)
        assert set(granted) == set(asked)


def test_a_cap_is_per_rule_and_per_window() -> None:
    state = LeadState("c")
    views = [Ev("page_view", {"path": "/blog"})] * 5
    for i, ev in enumerate(views):
        apply_event(state, RULES, f"v{i}", T0 + i * MIN, decide(ev, RULES), DEDUP_MS)
    # an uncapped rule beside it still counts in full
    apply_event(
        state,
        RULES,
        "p",
        T0 + 6 * MIN,
        decide(Ev("page_view", {"path": "/pricing"}), RULES),
        DEDUP_MS,
    )
    # the next window starts afresh
    apply_event(state, RULES, "late", T0 + 31 * MIN, decide(views[0], RULES), DEDUP_MS)
    by_rule: dict[str, float] = {}
    for _, index, got in state.awards:
        by_rule[RULES.rule_ids[index]] = by_rule.get(RULES.rule_ids[index], 0.0) + got
    view_points = RULES.engagement[VIEW].points
    assert by_rule["view"] == RULES.engagement[VIEW].cap_points + view_points
    assert by_rule["pricing"] == RULES.engagement[RULES.rule_ids.index("pricing")].points


# ------------------------------------------------------------------ tiers, hysteresis, handoffs


@dataclass
class Observed:
    """Scores the lead was judged at since the last handoff (None before the first)."""

    min_since_handoff: float | None = None

    def see(self, score: float) -> None:
        if self.min_since_handoff is not None:
            self.min_since_handoff = min(self.min_since_handoff, score)


def check_outputs(
    outputs: list[Output],
    tier: int,
    seq: int,
    gates_before: tuple[float, int, int, bool],
    gates_after: tuple[float, int, int, bool],
    seen: Observed,
) -> tuple[int, int]:
    """Check one step's outputs against thresholds and gates; return (tier, seq) after them."""
    tiers = RULES.tiers
    names = [t.name for t in tiers]
    top = len(tiers) - 1
    for o in outputs:
        seq += 1
        assert o.seq == seq, "output numbers run 1, 2, 3 ... per lead"
        assert o.lead_id == "lead"
        if o.kind == "tier_change":
            new = names.index(o.new_tier)
            assert o.old_tier == names[tier] and new != tier
            if new > tier:
                assert o.cause == "event", "time alone never raises a score"
                assert o.score >= tiers[new].enter
            else:
                assert o.score < tiers[new + 1].exit, "dropped while at or above the exit"
                assert new == 0 or o.score >= tiers[new].exit
            assert new == top or o.score < tiers[new + 1].enter, "could have entered higher"
            if o.cause == "decay":
                assert o.event_id is None
                seen.see(o.score)
            tier = new
        else:
            assert o.kind == "handoff"
            assert names.index(o.new_tier) == tier >= RULES.handoff_tier
            fit, grade, mask, dq = gates_after if o.cause == "event" else gates_before
            assert not dq, "handed off a disqualified lead"
            assert o.grade == grade <= RULES.min_grade
            assert o.bant_mask == mask and mask.bit_count() >= RULES.min_bant
            assert math.isclose(o.fit, fit, rel_tol=1e-9, abs_tol=1e-9)
            if seen.min_since_handoff is not None:
                assert seen.min_since_handoff < RULES.rearm_below, (
                    "second handoff without the score falling below rearm_below in between"
                )
            seen.min_since_handoff = math.inf
    return tier, seq


@settings(max_examples=60, deadline=None)
@given(steps=STEPS)
def test_tiers_move_only_across_thresholds_and_handoffs_respect_gates_and_rearm(
    steps: list[tuple[int, int, Ev, bool]],
) -> None:
    state = LeadState("lead")
    applied: list[tuple[int, Decision]] = []
    tier, seq = 0, 0
    seen = Observed()
    kinds: list[str] = []
    clock = T0
    for i, (gap, late, shape, repeat) in enumerate(steps):
        clock += gap * MIN
        t = clock - late * MIN
        event_id = "e0" if repeat and i else f"e{i}"
        decision = decide(shape, RULES)
        t_eval = t if state.last_ms is None else max(state.last_ms, t)
        before = copy.deepcopy(state) if event_id in state.seen else None
        pre_score = score_at(state, RULES, t_eval)
        gates_before = oracle_gates(applied, RULES)
        outputs = apply_event(state, RULES, event_id, t, decision, DEDUP_MS)
        if outputs is None:
            assert before is not None, "a new event id was taken for a duplicate"
            assert state == before, "a duplicate changed the state"
            continue
        applied.append((t, decision))
        seen.see(pre_score)
        tier, seq = check_outputs(
            outputs, tier, seq, gates_before, oracle_gates(applied, RULES), seen
        )
        kinds += [o.kind for o in outputs]
        post_score = score_at(state, RULES, t_eval)
        seen.see(post_score)
        # After every event: the tier is the one hysteresis allows for the score.
        assert state.tier == tier and state.seq == seq
        assert tier == 0 or post_score >= RULES.tiers[tier].exit
        assert tier == len(RULES.tiers) - 1 or post_score < RULES.tiers[tier + 1].enter
        assert state.last_ms == t_eval
    # Steer generation towards the interesting case: several handoffs, with re-arms between.
    target(float(sum(o == "handoff" for o in kinds)), label="handoffs")


# ------------------------------------------------------------------ advance and due times


@settings(max_examples=80, deadline=None)
@given(steps=DISTINCT, minutes=st.integers(0, 600))
def test_due_time_is_when_the_score_first_falls_below_the_exit(
    steps: list[tuple[int, Ev]], minutes: int
) -> None:
    state = LeadState("lead")
    # A trial signup at the end lifts most sequences into a tier, so there is a drop to time.
    for i, (m, shape) in enumerate([*steps, (minutes, Ev("trial_signup"))]):
        apply_event(state, RULES, f"e{i}", T0 + m * MIN, decide(shape, RULES), DEDUP_MS)
    if state.tier == 0:
        assert due_ms(state, RULES) is None
        return
    assert state.last_ms is not None
    exit_ = RULES.tiers[state.tier].exit
    tol = 1e-9 * max(1.0, abs(exit_))
    due = due_ms(state, RULES)
    if due is None:
        # Fit and penalties alone hold the lead in its tier, forever.
        assert score_at(state, RULES, state.last_ms + 10**12) >= exit_
        return
    assert due > state.last_ms
    assert score_at(state, RULES, due - 1) >= exit_ - tol
    assert score_at(state, RULES, due) < exit_ + tol
    early = copy.deepcopy(state)
    assert advance(early, RULES, due - 1) == []
    assert early == state
    outputs = advance(state, RULES, due)
    first = outputs[0]
    assert (first.kind, first.cause, first.event_id) == ("tier_change", "decay", None)
    assert first.old_tier == RULES.tiers[early.tier].name
    assert first.time_ms == due
    assert first.score < exit_


def test_advance_drops_through_every_tier_in_time_order() -> None:
    state = LeadState("lead")
    for i in range(3):
        apply_event(state, RULES, f"t{i}", T0, decide(Ev("trial_signup"), RULES), DEDUP_MS)
    assert state.tier == len(RULES.tiers) - 1
    outputs = advance(state, RULES, T0 + 100 * int(H_MS))
    drops = [(o.old_tier, o.new_tier) for o in outputs if o.kind == "tier_change"]
    assert drops == [("hot", "warm"), ("warm", "cold")]
    assert [o.time_ms for o in outputs] == sorted(o.time_ms for o in outputs)
    assert state.tier == 0 and due_ms(state, RULES) is None


# ------------------------------------------------------------------ duplicates


@settings(max_examples=80, deadline=None)
@given(steps=DISTINCT, data=st.data())
def test_duplicate_ids_within_the_window_change_nothing(
    steps: list[tuple[int, Ev]], data: st.DataObject
) -> None:
    state = LeadState("lead")
    for i, (m, shape) in enumerate(steps):
        apply_event(state, RULES, f"e{i}", T0 + m * MIN, decide(shape, RULES), DEDUP_MS)
    i = data.draw(st.integers(0, len(steps) - 1))
    minutes, shape = steps[i]
    # a redelivery (same time) or a producer retry that re-stamped the time
    t = data.draw(st.sampled_from([T0 + minutes * MIN, T0 + data.draw(st.integers(0, 900)) * MIN]))
    before = copy.deepcopy(state)
    assert apply_event(state, RULES, f"e{i}", t, decide(shape, RULES), DEDUP_MS) is None
    assert state == before


def test_an_id_last_seen_before_the_window_counts_as_new() -> None:
    window = 3_600_000
    state = LeadState("lead")
    click = decide(Ev("email_click"), RULES)
    assert apply_event(state, RULES, "a", T0, click, window) is not None
    assert apply_event(state, RULES, "a", T0, click, window) is None
    assert apply_event(state, RULES, "b", T0 + window + 1, click, window) is not None
    assert apply_event(state, RULES, "a", T0 + window + 2, click, window) is not None
    assert len(state.awards) == 3


def test_a_second_handoff_needs_the_score_below_rearm_below_first() -> None:
    vp = decide(Ev("identify", traits={"title": "VP Sales"}), RULES)
    trial = decide(Ev("trial_signup"), RULES)
    hour = int(H_MS)
    state = LeadState("lead")

    def kinds(event_id: str, t: int, decision: Decision) -> list[tuple[str, str, str]]:
        outputs = apply_event(state, RULES, event_id, t, decision, DEDUP_MS)
        assert outputs is not None
        return [(o.kind, o.cause, o.new_tier) for o in outputs]

    assert kinds("vp", T0, vp) == [("tier_change", "event", "warm")]
    assert kinds("t1", T0, trial) == [("tier_change", "event", "hot"), ("handoff", "event", "hot")]
    # One half-life on: below hot's exit, above rearm_below; back to hot, no second handoff.
    assert RULES.rearm_below <= score_at(state, RULES, T0 + hour) < RULES.tiers[2].exit
    assert kinds("t2", T0 + hour, trial) == [
        ("tier_change", "decay", "warm"),
        ("tier_change", "event", "hot"),
    ]
    # Five more: below rearm_below, so re-armed; hot again hands off again.
    assert score_at(state, RULES, T0 + 6 * hour) < RULES.rearm_below
    assert kinds("t3", T0 + 6 * hour, trial) == [
        ("tier_change", "decay", "warm"),
        ("tier_change", "event", "hot"),
        ("handoff", "event", "hot"),
    ]
    # A bot signing up: re-armed and hot again, but disqualified, so no handoff.
    bot_trial = decide(Ev("trial_signup", context={"user_agent": "googlebot"}), RULES)
    assert kinds("bot", T0 + 12 * hour, bot_trial) == [
        ("tier_change", "decay", "warm"),
        ("tier_change", "event", "hot"),
    ]
    assert disqualified(state) and state.armed
