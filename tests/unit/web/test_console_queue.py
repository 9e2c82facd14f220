"""The queue: each tier's leads, best first, as the reference model judges them at now."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamscore.scoring import reference, state
from streamscore.scoring.engine import decide
from streamscore.scoring.rules import CompiledRules, parse_rules_text
from streamscore.web.console.queue import account_attribute, build_queue
from tests.state_support import DAY, HOUR, RULE_VARIANTS, SHAPES, T0, Ev

LEADS = [f"lead-{i}" for i in range(8)] + ["<script>x</script>", "a{g0}:*"]
#: Score tolerance: describe_lead rounds to 3 decimals, the reference sums in another order.
TOLERANCE = 2e-3

EVENTS = st.lists(
    st.tuples(
        st.sampled_from(LEADS),
        st.sampled_from([0, 60_000, HOUR, 6 * HOUR, DAY]),
        st.integers(0, len(SHAPES) - 1),
    ),
    min_size=1,
    max_size=80,
)


def play(
    events: list[tuple[str, int, int]], rules: CompiledRules
) -> tuple[dict[str, state.LeadState], dict[str, reference.LeadState], int]:
    """Every event through both the production state and the reference; the last time."""
    leads: dict[str, state.LeadState] = {}
    refs: dict[str, reference.LeadState] = {}
    clock = T0
    for i, (lead, gap, shape) in enumerate(events):
        clock += gap
        decision = decide(SHAPES[shape], rules)
        state.apply_event(
            leads.setdefault(lead, state.new_lead(lead)), rules, f"e{i}", clock, decision, 0, []
        )
        reference.apply_event(
            refs.setdefault(lead, reference.LeadState(lead)), rules, f"e{i}", clock, decision, 0
        )
    return leads, refs, clock


@settings(max_examples=150, deadline=None)
@given(
    events=EVENTS,
    rules=st.sampled_from(RULE_VARIANTS),
    quiet_ms=st.sampled_from([0, HOUR // 2, 3 * HOUR, 5 * DAY]),
    size=st.integers(1, 6),
)
def test_each_tier_lists_its_best_leads_at_now(
    events: list[tuple[str, int, int]], rules: CompiledRules, quiet_ms: int, size: int
) -> None:
    leads, refs, clock = play(events, rules)
    now = clock + quiet_ms
    expected: dict[str, dict[str, float]] = {t.name: {} for t in rules.tiers}
    for lead, ref in refs.items():
        reference.advance(ref, rules, now)
        expected[rules.tiers[ref.tier].name][lead] = reference.score_at(ref, rules, now)
    queue = build_queue(leads.values(), rules, now, size)
    assert [q.tier for q in queue] == [t.name for t in reversed(rules.tiers[1:])]
    for tier in queue:
        want = expected[tier.tier]
        rows = tier.rows
        assert len(rows) == min(size, len(want))
        assert all(r.lead_id in want for r in rows), "a lead listed under a tier it is not in"
        for row in rows:
            assert abs(row.score - want[row.lead_id]) <= TOLERANCE
        scores = [r.score for r in rows]
        assert scores == sorted(scores, reverse=True)
        if rows:
            left_out = [s for lead, s in want.items() if lead not in {r.lead_id for r in rows}]
            assert all(s <= rows[-1].score + TOLERANCE for s in left_out)


def test_a_lead_is_listed_once_and_the_first_tier_never() -> None:
    rules = RULE_VARIANTS[0]
    lead = state.new_lead("ann")
    state.apply_event(lead, rules, "e1", T0, decide(Ev("trial_signup"), rules), 0, [])
    cold = state.new_lead("bob")
    state.apply_event(cold, rules, "e2", T0, decide(Ev("page_view"), rules), 0, [])
    queue = build_queue([lead, state.clone(lead), cold], rules, T0, 10)
    listed = [r.lead_id for t in queue for r in t.rows]
    assert listed == ["ann"]


def test_the_account_column_is_the_email_domain_attribute() -> None:
    text = (
        "version: acc\ndecay: {half_life: 1d}\nattributes:\n"
        "  email_domain: {from: [traits.email], transform: email_domain}\n"
        "engagement:\n  - {id: trial, when: {type: trial_signup}, points: 50}\n"
        "tiers:\n  - {name: cold}\n  - {name: hot, enter: 40, exit: 30}\n"
        "handoff: {tier: hot}\n"
    )
    rules = parse_rules_text(text, "acc.yaml")
    assert account_attribute(rules) == "email_domain"
    lead = state.new_lead("ann")
    identify = Ev("identify", traits={"email": "Ann@Northwind.IO"})
    state.apply_event(lead, rules, "e1", T0, decide(identify, rules), 0, [])
    state.apply_event(lead, rules, "e2", T0, decide(Ev("trial_signup"), rules), 0, [])
    (hot,) = build_queue([lead], rules, T0, 5)
    assert [(r.lead_id, r.account) for r in hot.rows] == [("ann", "northwind.io")]
    assert account_attribute(RULE_VARIANTS[0]) is None
