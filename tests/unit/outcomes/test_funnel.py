"""Every awkward case of the per-lead funnel, each with its defined result."""

from __future__ import annotations

from collections import Counter

import pytest

from streamscore.outcomes.events import Outcome, OutcomeType
from streamscore.outcomes.funnel import (
    EMPTY,
    MAX_HANDOFFS,
    MAX_OUTCOMES,
    Funnel,
    Recycle,
    ScoreSnapshot,
    SlaBreach,
    apply_outcome,
    attribute,
    breach_is_due,
    check_sla,
    contribution,
    expires_ms,
    next_sla_due_ms,
    record_handoff,
    stages,
)
from streamscore.outcomes.kpi import field, global_field
from streamscore.scoring.outcome_rules import OutcomeRules, OutcomesSpec, compile_outcomes

H = 3_600_000  # an hour in ms
T0 = 1_772_000_000_000
HOT = "live|v1|{}|hot"


def make_rules(**section: object) -> OutcomeRules:
    spec = {"sla": {"hot": "1h"}, "attribution_window": "2d", **section}
    return compile_outcomes(OutcomesSpec.model_validate(spec), ("cold", "warm", "hot"), 70.0, 50.0)


RULES = make_rules()
RECYCLING = make_rules(recycle={"action": "disarm", "rearm_below": 40})


def handoff(
    hid: str = "h1", at: int = T0, tier: str = "hot", score: float = 95.0, model: str = "live"
) -> ScoreSnapshot:
    return ScoreSnapshot(score, tier, 2, 0b0101, "v1", model, hid, at)


def outcome(
    oid: str, kind: OutcomeType, at: int, reason: str | None = None, amount: float | None = None
) -> Outcome:
    return Outcome(oid, "lead-1", kind, at, amount=amount, reason=reason)


def hot(metric: str, *labels: str) -> str:
    return field("live", "v1", metric, "hot", *labels)


def feed(
    funnel: Funnel,
    *items: ScoreSnapshot | Outcome,
    rules: OutcomeRules = RULES,
    now: int | None = None,
    snapshot: ScoreSnapshot | None = None,
) -> tuple[Funnel, Counter[str], list[object]]:
    total: Counter[str] = Counter()
    effects: list[object] = []
    for item in items:
        at = item.handoff_ms if isinstance(item, ScoreSnapshot) else item.time_ms
        clock = now if now is not None else at or T0
        if isinstance(item, ScoreSnapshot):
            funnel, deltas, more = record_handoff(funnel, item, rules, clock)
        else:
            funnel, deltas, more = apply_outcome(funnel, item, snapshot, rules, clock)
        total.update(deltas)
        effects += more
    return funnel, total, effects


def test_the_plain_story() -> None:
    funnel, deltas, effects = feed(
        EMPTY,
        handoff(),
        outcome("a", OutcomeType.SALES_ACCEPTED, T0 + 10 * 60_000),
        outcome("t", OutcomeType.FIRST_TOUCH, T0 + 30 * 60_000),
        outcome("o", OutcomeType.OPPORTUNITY_CREATED, T0 + 2 * 86400_000, amount=5000),
        outcome("w", OutcomeType.WON, T0 + 20 * 86400_000, amount=4800),
    )
    assert effects == []
    assert deltas == Counter(
        {
            hot("handoffs"): 1,
            "live|v1|band_handoffs|f94~96": 1,
            **{hot("stage", s): 1 for s in ("accepted", "touched", "opportunity", "won")},
            **{
                f"live|v1|band_stage|f94~96|{s}": 1
                for s in ("accepted", "touched", "opportunity", "won")
            },
            hot("t_touch", "1800"): 1,
            hot("t_opportunity", "172800"): 1,
            hot("t_close", "2592000"): 1,
            hot("sla_due"): 1,
            hot("sla_met"): 1,
        }
    )
    s = stages(funnel, funnel.handoffs[0], RULES)
    assert (s.opportunity_amount, s.won_amount, s.verdict, s.close) == (
        5000,
        4800,
        "accepted",
        "won",
    )
    assert deltas == contribution(funnel, RULES)


def test_won_before_opportunity_created_implies_the_opportunity() -> None:
    funnel, _, _ = feed(EMPTY, handoff(), outcome("w", OutcomeType.WON, T0 + 5 * H))
    s = stages(funnel, funnel.handoffs[0], RULES)
    assert (s.opportunity_ms, s.touched_ms, s.close) == (T0 + 5 * H, T0 + 5 * H, "won")
    # the opportunity_created arriving later, earlier in CRM time, moves the opportunity time
    _, deltas, _ = feed(funnel, outcome("o", OutcomeType.OPPORTUNITY_CREATED, T0 + 2 * H))
    assert deltas == {
        hot("t_opportunity", "28800"): -1,
        hot("t_opportunity", "7200"): 1,
        hot("t_touch", "28800"): -1,
        hot("t_touch", "7200"): 1,
    }


def test_a_duplicate_is_counted_and_changes_nothing_else() -> None:
    funnel, _, _ = feed(
        EMPTY, handoff(), outcome("x", OutcomeType.SALES_REJECTED, T0 + H, "no budget")
    )
    # the same id again, even with other content: the first copy wins
    again, deltas, effects = apply_outcome(
        funnel, outcome("x", OutcomeType.WON, T0 + 2 * H), handoff(), RECYCLING, T0 + 3 * H
    )
    assert deltas == {global_field("duplicates"): 1}
    assert effects == ()
    assert again.outcomes == funnel.outcomes and again.duplicates == 1


def test_a_late_outcome_counts_toward_the_handoff_of_its_time() -> None:
    # h1's SLA breached when h2 was recorded ten days later (its clock passed h1's deadline)
    funnel, _, effects = feed(
        EMPTY, handoff("h1", T0), handoff("h2", T0 + 10 * 86400_000, score=120)
    )
    assert [e.handoff_id for e in effects if isinstance(e, SlaBreach)] == ["h1"]
    _, deltas, effects = feed(
        funnel, outcome("t", OutcomeType.FIRST_TOUCH, T0 + 2 * H), now=T0 + 11 * 86400_000
    )
    assert deltas[hot("stage", "touched")] == 1  # one handoff touched: h1
    assert deltas[hot("t_touch", "7200")] == 1  # two hours after h1, not before h2
    assert deltas[hot("sla_met")] == 0  # h1's touch came after its deadline
    assert deltas[hot("sla_missed")] == 1  # h2's deadline passed now, untouched
    assert [e.handoff_id for e in effects if isinstance(e, SlaBreach)] == ["h2"]


def test_an_outcome_before_its_handoff() -> None:
    # a rep calls the lead before it turns hot: unattributed until the handoff, then moved to it
    funnel, deltas, _ = feed(EMPTY, outcome("t", OutcomeType.FIRST_TOUCH, T0 - 5 * H))
    assert deltas == {global_field("unattributed", "first_touch"): 1}
    funnel, deltas, effects = feed(funnel, handoff("h1", T0))
    assert deltas[global_field("unattributed", "first_touch")] == -1
    assert deltas[hot("stage", "touched")] == 1
    assert deltas[hot("sales_first")] == 1
    assert deltas[hot("t_touch", "0")] == 1  # before the handoff: the 0 bucket
    assert deltas[hot("sla_met")] == 1  # a touch before the handoff meets its SLA
    assert effects == []
    assert next_sla_due_ms(funnel, RULES) is None


def test_window_bounds_early_attribution() -> None:
    window = RULES.attribution_window_ms
    inside, _, _ = feed(EMPTY, outcome("a", OutcomeType.SALES_ACCEPTED, T0 - window), handoff())
    assert attribute(inside, RULES)["a"]["live"].handoff_id == "h1"  # exactly the window: in
    outside, deltas, _ = feed(
        EMPTY, outcome("a", OutcomeType.SALES_ACCEPTED, T0 - window - 1), handoff()
    )
    assert attribute(outside, RULES)["a"] == {}
    assert deltas[global_field("unattributed", "sales_accepted")] == 1


def test_an_unknown_lead_keeps_its_outcomes() -> None:
    funnel, deltas, effects = feed(
        EMPTY, outcome("r", OutcomeType.SALES_REJECTED, T0, "spam"), rules=RECYCLING
    )
    assert deltas == {global_field("unattributed", "sales_rejected"): 1}
    assert effects == []  # no lead to recycle
    assert expires_ms(funnel, RULES) == T0 + RULES.attribution_window_ms
    later, deltas, _ = feed(funnel, handoff("h1", T0 + H))
    assert deltas[hot("stage", "rejected")] == 1
    assert deltas["live|v1|rejected_reason|bad_data"] == 1
    assert expires_ms(later, RULES) is None


def test_sla_breach_is_emitted_once_and_only_when_due() -> None:
    funnel, _, _ = feed(EMPTY, handoff())
    deadline = T0 + H
    assert next_sla_due_ms(funnel, RULES) == deadline + 1
    assert check_sla(funnel, RULES, deadline) == (
        funnel,
        {},
        (),
    )  # a touch at the deadline is in time
    assert not breach_is_due(funnel, funnel.handoffs[0], RULES, deadline)
    breached, deltas, effects = check_sla(funnel, RULES, deadline + 1)
    assert effects == (SlaBreach("h1", "live", "v1", "hot", T0, deadline),)
    assert deltas == {hot("sla_missed"): 1, hot("sla_breaches"): 1}
    assert check_sla(breached, RULES, deadline + 10 * H) == (breached, {}, ())
    assert next_sla_due_ms(breached, RULES) is None
    # a touch within the deadline that arrives after the breach: met after all, event stays sent
    _, touched, later = feed(
        breached, outcome("t", OutcomeType.FIRST_TOUCH, deadline - 1), now=deadline + 2 * H
    )
    assert touched[hot("sla_missed")] == -1 and touched[hot("sla_met")] == 1
    assert hot("sla_breaches") not in touched and later == []


def test_touch_at_the_deadline_meets_it_and_one_after_misses_it() -> None:
    funnel, _, _ = feed(EMPTY, handoff())
    _, deltas, effects = feed(funnel, outcome("t", OutcomeType.FIRST_TOUCH, T0 + H))
    assert deltas[hot("sla_met")] == 1 and effects == []
    _, deltas, effects = feed(funnel, outcome("t", OutcomeType.FIRST_TOUCH, T0 + H + 1))
    assert deltas[hot("sla_missed")] == 1 and len(effects) == 1  # the touch's time proves it


def test_a_tier_without_a_deadline_has_no_sla() -> None:
    funnel, deltas, _ = feed(EMPTY, handoff(tier="warm", score=60))
    assert not any("sla" in key for key in deltas)
    assert next_sla_due_ms(funnel, RULES) is None
    assert check_sla(funnel, RULES, T0 + 1000 * H) == (funnel, {}, ())


def test_handoff_replayed_after_its_deadline_breaches_at_once() -> None:
    _, _, effects = feed(EMPTY, handoff(), now=T0 + 2 * H)
    assert [type(e) for e in effects] == [SlaBreach]


def test_recycling_on_rejection() -> None:
    funnel, _, _ = feed(EMPTY, handoff())
    _, _, effects = feed(
        funnel,
        outcome("r", OutcomeType.SALES_REJECTED, T0 + H, "Not a fit"),
        rules=RECYCLING,
        snapshot=handoff(),
    )
    assert effects == [Recycle("r", T0 + H, "disarm", 0.0, 40.0, "not_a_fit")]
    # without a recycle section: nothing
    _, _, effects = feed(
        funnel, outcome("r", OutcomeType.SALES_REJECTED, T0 + H), snapshot=handoff()
    )
    assert effects == []


@pytest.mark.parametrize(
    "later",
    [
        outcome("a", OutcomeType.SALES_ACCEPTED, T0 + 2 * H),
        outcome("o", OutcomeType.OPPORTUNITY_CREATED, T0 + 2 * H),
        handoff("h2", T0 + 2 * H),
    ],
)
def test_a_rejection_already_overtaken_does_not_recycle(later: Outcome | ScoreSnapshot) -> None:
    funnel, _, _ = feed(EMPTY, handoff(), later, rules=RECYCLING)
    _, _, effects = feed(
        funnel,
        outcome("r", OutcomeType.SALES_REJECTED, T0 + H),
        rules=RECYCLING,
        snapshot=handoff(),
    )
    assert effects == []


def test_latest_verdict_and_close_win_and_ties_go_to_rejected_and_won() -> None:
    funnel, _, _ = feed(
        EMPTY,
        handoff(),
        outcome("r", OutcomeType.SALES_REJECTED, T0 + H),
        outcome("a", OutcomeType.SALES_ACCEPTED, T0 + 2 * H),
        outcome("l", OutcomeType.LOST, T0 + 3 * H, "price"),
        outcome("w", OutcomeType.WON, T0 + 4 * H),
    )
    s = stages(funnel, funnel.handoffs[0], RULES)
    assert (s.verdict, s.close) == ("accepted", "won")
    tied, _, _ = feed(
        EMPTY,
        handoff(),
        outcome("a", OutcomeType.SALES_ACCEPTED, T0 + H),
        outcome("r", OutcomeType.SALES_REJECTED, T0 + H),
        outcome("w", OutcomeType.WON, T0 + H),
        outcome("l", OutcomeType.LOST, T0 + H),
    )
    s = stages(tied, tied.handoffs[0], RULES)
    assert (s.verdict, s.close) == ("rejected", "won")


def test_each_model_attributes_on_its_own_timeline() -> None:
    funnel, deltas, _ = feed(
        EMPTY,
        handoff("h1", T0),
        handoff("s1", T0 + H, model="shadow"),
        outcome("w", OutcomeType.WON, T0 + 2 * H),
    )
    assert deltas[hot("stage", "won")] == 1
    assert deltas["shadow|v1|stage|hot|won"] == 1
    assert set(attribute(funnel, RULES)["w"]) == {"live", "shadow"}


def test_a_handoff_older_than_the_funnel_is_rebuilt_from_the_snapshot() -> None:
    snapshot = handoff("h0", T0 - 86400_000, score=80)
    funnel, deltas, effects = feed(EMPTY, outcome("w", OutcomeType.WON, T0), snapshot=snapshot)
    assert funnel.handoffs[0].inferred and funnel.handoffs[0].handoff_id == "h0"
    assert deltas[hot("handoffs")] == 1 and deltas[hot("stage", "won")] == 1
    # it predates the SLA clock: no deadline, no breach for a day-old handoff
    assert funnel.handoffs[0].deadline_ms is None and effects == []
    assert not any("sla" in key for key in deltas)


def test_caps_count_overflow() -> None:
    funnel = EMPTY
    for i in range(MAX_OUTCOMES):
        funnel, _, _ = feed(funnel, outcome(f"o{i}", OutcomeType.FIRST_TOUCH, T0 + i))
    _, deltas, _ = feed(funnel, outcome("one-more", OutcomeType.WON, T0))
    assert deltas == {global_field("overflow"): 1}
    funnel = EMPTY
    for i in range(MAX_HANDOFFS):
        funnel, _, _ = feed(funnel, handoff(f"h{i}", T0 + i * H, tier="warm"))
    _, deltas, _ = feed(funnel, handoff("h-extra", T0))
    assert deltas == {global_field("overflow"): 1}


def test_the_same_handoff_twice_is_a_no_op() -> None:
    funnel, _, _ = feed(EMPTY, handoff())
    assert record_handoff(funnel, handoff(), RULES, T0) == (funnel, {}, ())
    with pytest.raises(ValueError, match="handoff_id"):
        record_handoff(funnel, ScoreSnapshot(1.0, "hot", 1, 0, "v1"), RULES, T0)
