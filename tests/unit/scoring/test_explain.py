"""scoring/explain.py: a lead judged at now (no stale tier or arming), in the shape views print."""

from __future__ import annotations

import math

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from streamscore.events import format_time_ms
from streamscore.scoring import reference, state
from streamscore.scoring.engine import decide
from streamscore.scoring.explain import describe_lead
from streamscore.scoring.rules import CompiledRules
from streamscore.store.codec import decode_lead
from tests.state_support import DAY, HOUR, RULE_VARIANTS, RULES_1H, STEPS, T0, Ev, Step, timeline

H_MS = int(RULES_1H.half_life_s * 1000)
VP = Ev("identify", traits={"title": "VP Sales"})
TRIAL = Ev("trial_signup")


def handed_off_lead() -> state.LeadState:
    """VP (20 fit) + a trial (25): hot, handed off, disarmed."""
    s = state.new_lead("ann")
    for i, ev in enumerate([VP, TRIAL]):
        state.apply_event(s, RULES_1H, f"e{i}", T0, decide(ev, RULES_1H), 0, [])
    assert (s.tier, s.armed) == (2, False)
    return s


def test_after_a_quiet_period_the_tier_and_score_agree() -> None:
    """The defect: score 0.0 shown beside a stale tier: hot (the decay tick had not run)."""
    s = handed_off_lead()
    stored = state.clone(s)
    now = T0 + 10 * H_MS
    info = describe_lead(s, RULES_1H, now)
    assert s == stored, "describing a lead must not change it"
    assert info["tier"] == "warm", "hot's exit (35) is long passed; 20 fit points hold warm"
    assert info["score"] == round(20 + 25 * 2.0**-10, 3)
    assert info["handoff_armed"] is True
    assert (info["as_of"], info["last_event_time"]) == (format_time_ms(now), format_time_ms(T0))


def test_a_lead_below_rearm_below_shows_armed_even_with_no_drop_in_between() -> None:
    """Dropped hot -> warm just below 35 (no re-arm there), then decayed below 25: still warm,
    and the next event would re-arm it, so the view says armed."""
    s = handed_off_lead()
    due = state.due_ms(s, RULES_1H)
    assert due is not None
    state.advance(s, RULES_1H, due, [])
    assert (s.tier, s.armed) == (1, False)
    now = due + 2 * H_MS
    score = state.score_at(s, RULES_1H, now)
    assert RULES_1H.tiers[1].exit <= score < RULES_1H.rearm_below
    info = describe_lead(s, RULES_1H, now)
    assert (info["tier"], info["handoff_armed"]) == ("warm", True)
    assert s.armed is False
    # Above rearm_below it stays disarmed.
    assert describe_lead(s, RULES_1H, due)["handoff_armed"] is False


def test_a_time_before_the_last_evaluation_shows_the_lead_at_its_present() -> None:
    s = handed_off_lead()
    info = describe_lead(s, RULES_1H, T0 - DAY)
    assert info["as_of"] == info["last_event_time"]
    assert (info["tier"], info["handoff_armed"]) == ("hot", False)


def test_a_lua_era_state_is_shown_with_every_field_of_the_view() -> None:
    """A state stored by 0.1's Lua engine is explained with the view's whole shape."""
    title = [T0, "vp sales", 20, 2, 0, [["exec", 20]]]
    legacy = {
        "id": "old", "a": T0, "e": 3 + 25 * 2.0, "pen": -15, "lt": T0 + HOUR, "tier": 1,
        "arm": 0, "n": 3, "fit": 20, "bant": 2, "ver": RULES_1H.version, "r:view": 3.0,
        "r:trial": 50.0, "n:unsub": -15, "P": msgpack.packb({"title": title}),
    }  # fmt: skip
    info = describe_lead(
        decode_lead(msgpack.packb(legacy, use_bin_type=False)), RULES_1H, T0 + HOUR
    )
    assert set(info) == {
        "lead_id", "score", "engagement", "fit", "penalties", "tier", "grade", "bant",
        "disqualified", "handoff_armed", "last_event_time", "rules_version", "as_of",
        "contributions", "attributes", "identity", "account", "story",
    }  # fmt: skip
    assert info["account"] is None
    assert info["lead_id"] == "old" and info["fit"] == 20 and info["penalties"] == -15
    assert info["attributes"]["title"]["value"] == "vp sales"
    assert {c["rule"] for c in info["contributions"]} == {"view", "trial", "unsub", "exec"}


@settings(max_examples=100, deadline=None)
@given(
    steps=STEPS,
    rules=st.sampled_from(RULE_VARIANTS),
    quiet_ms=st.sampled_from([0, HOUR // 3, HOUR, 6 * HOUR, 30 * DAY]),
)
def test_the_view_is_the_reference_judged_at_now(
    steps: list[Step], rules: CompiledRules, quiet_ms: int
) -> None:
    refs: dict[str, reference.LeadState] = {}
    leads: dict[str, state.LeadState] = {}
    for lead, event_id, t, ev in timeline(steps):
        decision = decide(ev, rules)
        ref = refs.setdefault(lead, reference.LeadState(lead))
        reference.apply_event(ref, rules, event_id, t, decision, 0)
        s = leads.setdefault(lead, state.new_lead(lead))
        state.apply_event(s, rules, event_id, t, decision, 0, [])
    for lead, ref in refs.items():
        assert ref.last_ms is not None
        now = ref.last_ms + quiet_ms
        info = describe_lead(leads[lead], rules, now)
        reference.advance(ref, rules, now)
        score = reference.score_at(ref, rules, now)
        assert info["tier"] == rules.tiers[ref.tier].name
        assert math.isclose(info["score"], round(score, 3), abs_tol=1.5e-3)
        assert info["handoff_armed"] == (ref.armed or score < rules.rearm_below)
        assert info["disqualified"] == reference.disqualified(ref)
