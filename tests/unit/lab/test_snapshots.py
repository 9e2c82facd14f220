"""What the lab reads from stored lead states: handed off or not, outcomes, learning examples."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamscore.lab.diff import LeadOutcome
from streamscore.lab.snapshots import (
    examples_of,
    handed_off,
    lead_outcome,
    lead_snapshot,
    merge_outcomes,
)
from streamscore.outcomes.events import OutcomeType
from streamscore.outcomes.funnel import Funnel, HandoffRecord, OutcomeRecord, to_wire
from streamscore.scoring.rules import load_rules
from streamscore.scoring.state import LeadState, score_at
from tests.conftest import RULES_FILE

RULES = load_rules(RULES_FILE)
DAY = 86_400_000


def handoff(hid: str, t: int, version: str = RULES.version) -> HandoffRecord:
    features = (("pricing_page", 30.0), ("title_executive", 25.0))
    return HandoffRecord(
        hid, t, "live", version, "hot", 120.0, 1, 3, "f110~130", None, False, features
    )


def outcome(oid: str, kind: OutcomeType, t: int) -> OutcomeRecord:
    return OutcomeRecord(oid, kind, t)


def lead_with(funnel: Funnel) -> LeadState:
    state = LeadState("lead-1")
    state.funnel = to_wire(funnel)
    return state


def test_a_lead_never_handed_off_has_no_outcome_and_no_example() -> None:
    state = LeadState("lead-0")
    assert not handed_off(state)
    assert lead_outcome(state) is None
    examples, count = examples_of(state, RULES, None)
    assert (examples, count.handoffs) == ([], 0)
    snap = lead_snapshot(state, RULES, 10 * DAY)
    assert snap.lead_id == "lead-0"
    assert snap.score == round(score_at(state, RULES, 10 * DAY), 6)
    assert snap.tier == RULES.tiers[0].name


def test_a_handoff_with_a_won_deal_is_a_won_example_and_a_converted_lead() -> None:
    funnel = Funnel(
        handoffs=(handoff("h1", 1 * DAY),),
        outcomes=(
            outcome("o1", OutcomeType.FIRST_TOUCH, 1 * DAY + 60_000),
            outcome("o2", OutcomeType.OPPORTUNITY_CREATED, 2 * DAY),
            outcome("o3", OutcomeType.WON, 5 * DAY),
        ),
    )
    state = lead_with(funnel)
    assert handed_off(state)
    assert lead_outcome(state) == LeadOutcome(True, True)
    examples, count = examples_of(state, RULES, None)
    assert [e.outcome for e in examples] == ["won"]
    assert count.handoffs == 1
    # Too recent: its outcome may still come, so it does not teach anything yet.
    examples, count = examples_of(state, RULES, 1 * DAY)
    assert (examples, count.too_recent) == ([], 1)


def test_a_deal_lost_then_reopened_and_won_counts_as_won_and_other_rules_are_left_out() -> None:
    funnel = Funnel(
        handoffs=(handoff("h1", 1 * DAY, version="older"), handoff("h2", 2 * DAY)),
        outcomes=(
            outcome("o1", OutcomeType.OPPORTUNITY_CREATED, 3 * DAY),
            outcome("o2", OutcomeType.LOST, 4 * DAY),
            outcome("o3", OutcomeType.WON, 6 * DAY),
        ),
    )
    state = lead_with(funnel)
    assert lead_outcome(state) == LeadOutcome(True, True)
    examples, count = examples_of(state, RULES, None)
    assert len(examples) == 1
    assert count.other_rules == 1


outcomes = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]), st.builds(LeadOutcome, st.booleans(), st.booleans())
)


@given(st.lists(outcomes, max_size=4))
def test_merged_outcomes_reach_a_stage_when_any_source_saw_it(
    sources: list[dict[str, LeadOutcome]],
) -> None:
    merged = merge_outcomes(*sources)
    assert set(merged) == {lead for source in sources for lead in source}
    for lead, got in merged.items():
        seen = [s[lead] for s in sources if lead in s]
        assert got == LeadOutcome(any(o.opportunity for o in seen), any(o.won for o in seen))
