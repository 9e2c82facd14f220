"""scoring/state.py (incremental) agrees with scoring/reference.py (brute force), event by event."""

from __future__ import annotations

import math

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from streamscore.scoring import reference, state
from streamscore.scoring.engine import decide
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import CompiledRules
from streamscore.scoring.state import CAP_WINDOWS_KEPT
from tests.state_support import (
    DAY,
    DEDUP_WINDOWS,
    HOUR,
    MIN,
    RULE_VARIANTS,
    STEPS,
    Step,
    timeline,
)

VIEW_SHAPE = 0  # SHAPES[0]: a /blog page view, 3 capped points
DOCS_SHAPE = 1  # SHAPES[1]: a /docs page view, view's 3 capped points and docs' 3
UNSUBSCRIBE_SHAPE = 8  # SHAPES[8]: unsub's -15 points


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def forgotten_window(
    s: state.LeadState, rules: CompiledRules, awards: tuple[tuple[int, float], ...], t: int
) -> bool:
    """Whether a capped award of this event falls before the windows its rule keeps."""
    for index, _ in awards:
        rule = rules.engagement[index]
        windows = (s.caps or {}).get(rule.id)
        window = t // int(rule.cap_window_s * 1000) if rule.cap_points else 0
        if windows and window < max(windows) - CAP_WINDOWS_KEPT:
            return True
    return False


def assert_same_outputs(expected: list[Output], got: list[Output]) -> None:
    """Same outputs field by field; floats within 1e-9 relative."""

    def exact(o: Output) -> tuple[object, ...]:
        return (
            o.kind,
            o.lead_id,
            o.seq,
            o.old_tier,
            o.new_tier,
            o.event_id,
            o.time_ms,
            o.cause,
            o.grade,
            o.bant_mask,
            tuple(rule for rule, _ in o.reasons),
            o.rules_version,
        )

    assert [exact(o) for o in got] == [exact(o) for o in expected]
    for e, g in zip(expected, got, strict=True):
        assert close(e.score, g.score), (e, g)
        assert close(e.engagement, g.engagement), (e, g)
        assert close(e.fit, g.fit), (e, g)
        for (_, pe), (_, pg) in zip(e.reasons, g.reasons, strict=True):
            assert close(pe, pg), (e, g)


def assert_same_lead(ref: reference.LeadState, got: state.LeadState, rules: CompiledRules) -> None:
    """Same tier, arming, sequence, present, score, due time and gates."""
    assert (got.tier, got.armed, got.seq) == (ref.tier, ref.armed, ref.seq)
    assert got.last_ms == ref.last_ms
    now = got.last_ms
    assert now is not None
    assert close(state.score_at(got, rules, now), reference.score_at(ref, rules, now))
    assert state.due_ms(got, rules) == reference.due_ms(ref, rules)
    assert close(got.fit, reference.fit_points(ref))
    assert got.bant == reference.bant_mask(ref)
    assert state.disqualified(got) == reference.disqualified(ref)


# Three capped views at t0 fill the 30 min window; one 10 h later; then a view at t0 + 3 min
# arrives: its window is 20 windows behind the newest, so it earns nothing (lead.lua had pruned
# that window and granted the 3 points a second time).
CAP_WINDOW_CASE = [
    Step("ann", 0, 0, VIEW_SHAPE, None),
    Step("ann", 0, 0, VIEW_SHAPE, None),
    Step("ann", 0, 0, VIEW_SHAPE, None),
    Step("ann", 10 * HOUR, 0, VIEW_SHAPE, None),
    Step("ann", 0, 10 * HOUR - 3 * MIN, VIEW_SHAPE, None),
]

# bob's /docs view earns view and docs 3 points each, a /blog view 5 days on earns view 3 more;
# 40 days after the first, with a 1 h half-life, the reference's docs is 0.0 and its view 3e-289,
# while state.py's decay factor from its points anchor underflows to 0.0 for both: ranked by raw
# points, the reference listed view, docs and state.py docs, view. Reasons rank by published
# (rounded) points, then rule id: docs, view on both sides.
REASONS_UNDERFLOW_CASE = [
    *[Step("ann", 0, 0, VIEW_SHAPE, None)] * 14,
    Step("bob", 0, 0, DOCS_SHAPE, None),
    *[Step("ann", DAY, 0, VIEW_SHAPE, None)] * 5,
    Step("bob", 0, 0, VIEW_SHAPE, None),
    Step("ann", 30 * DAY, 0, VIEW_SHAPE, None),
    Step("bob", 0, 0, UNSUBSCRIBE_SHAPE, None),
]


@settings(max_examples=600, deadline=None)
@given(
    rules=st.sampled_from(RULE_VARIANTS),
    steps=STEPS,
    dedup_ms=DEDUP_WINDOWS,
    after_ms=st.sampled_from([0, HOUR, 10 * DAY, 400 * DAY]),
)
@example(rules=RULE_VARIANTS[0], steps=CAP_WINDOW_CASE, dedup_ms=HOUR, after_ms=0)
@example(rules=RULE_VARIANTS[0], steps=REASONS_UNDERFLOW_CASE, dedup_ms=0, after_ms=10 * DAY)
def test_state_matches_the_reference(
    rules: CompiledRules, steps: list[Step], dedup_ms: int, after_ms: int
) -> None:
    refs: dict[str, reference.LeadState] = {}
    leads: dict[str, state.LeadState] = {}
    for lead, event_id, t, shape in timeline(steps):
        decision = decide(shape, rules)
        ref = refs.setdefault(lead, reference.LeadState(lead))
        got = leads.setdefault(lead, state.new_lead(lead))
        reused = event_id in ref.seen
        if forgotten_window(got, rules, decision.awards, t):
            event("capped award older than the kept windows")
        points_anchor = got.points_anchor_ms
        expected = reference.apply_event(ref, rules, event_id, t, decision, dedup_ms)
        out: list[Output] = []
        applied = state.apply_event(got, rules, event_id, t, decision, dedup_ms, out)
        assert applied is (expected is not None)
        if expected is None:
            event("duplicate")
            assert out == []
            continue
        if reused:
            event("id reused after the dedup window")
        if points_anchor is not None and got.points_anchor_ms != points_anchor:
            event("per-rule points re-anchored")
        assert_same_outputs(expected, out)
        assert_same_lead(ref, got, rules)
        for o in out:
            event(f"{o.kind}/{o.cause}")
    for lead, ref in refs.items():
        got = leads[lead]
        assert ref.last_ms is not None
        until = ref.last_ms + after_ms
        expected = reference.advance(ref, rules, until)
        out = []
        state.advance(got, rules, until, out)
        assert_same_outputs(expected, out)
        assert_same_lead(ref, got, rules)
        assert close(state.score_at(got, rules, until), reference.score_at(ref, rules, until))
        got_reasons = state.reasons_at(got, rules, until)
        ref_reasons = reference.reasons_at(ref, rules, until)
        assert [r for r, _ in got_reasons] == [r for r, _ in ref_reasons]
        assert all(close(g, e) for (_, g), (_, e) in zip(got_reasons, ref_reasons, strict=True))
