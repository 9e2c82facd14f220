"""Account roll-up (scoring/accounts.py) against a brute-force reference, and the rules file's
`accounts:` section (validated with located errors like the rest of the rules)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamscore.errors import RulesError
from streamscore.scoring.accounts import (
    LEFT,
    AccountHandoff,
    AccountState,
    Contribution,
    account_for,
    apply,
    best_members,
    email_domain,
    reference_score,
    score_at,
)
from streamscore.scoring.rules import AccountRules, parse_rules_text
from streamscore.store.codec import decode_account, encode_account

BASE = """
version: acct-1
decay: {half_life: 1d}
engagement:
  - {id: view, when: {type: page_view}, points: 10}
tiers: [{name: cold}, {name: hot, enter: 50}]
handoff: {tier: hot}
"""

ACCOUNTS = """
accounts:
  top: 3
  decay: {half_life: 2d}
  fit:
    - id: big
      when: {employees: {gte: 200}}
      points: 20
    - id: saas
      when: {industry: software, address.country: [de, fr]}
      points: 5
  tiers: [{name: cold}, {name: engaged, enter: 40}, {name: target, enter: 100, exit: 80}]
  handoff: {tier: target, rearm_below: 60}
  free_mail: [example-mail.com, webmail.*]
"""


def _accounts(text: str = ACCOUNTS) -> AccountRules:
    rules = parse_rules_text(BASE + text, "a.yaml")
    assert rules.accounts is not None
    return rules.accounts


RULES = _accounts()
DAY = 86_400_000


def test_rules_without_accounts_compile_to_none() -> None:
    assert parse_rules_text(BASE, "a.yaml").accounts is None


def test_accounts_section_compiles() -> None:
    r = RULES
    assert (r.top, r.half_life_s, r.handoff_tier, r.rearm_below) == (3, 2 * 86400.0, 2, 60)
    assert [t.name for t in r.tiers] == ["cold", "engaged", "target"]
    assert r.free_mail == {"example-mail.com"} and r.free_mail_prefixes == ("webmail.",)
    assert _accounts("accounts: {decay: {half_life: 1d}, tiers: [{name: a}, {name: b, "
                     "enter: 1}], handoff: {tier: b}}").top == 3  # fmt: skip


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "accounts:\n  decay: {half_life: 1d}\n  tiers: [{name: cold}, {name: hot, enter: 5}]\n"
            "  handoff: {tier: warm}\n",
            "line 11: accounts.handoff.tier: 'warm' must name a tier above the first",
        ),
        (
            "accounts:\n  decay: {half_life: 1d}\n  tiers: [{name: cold}, {name: hot, enter: 5, "
            "exit: 9}]\n  handoff: {tier: hot}\n",
            "line 10: accounts.tiers[1].exit: exit must be <= enter",
        ),
        (
            "accounts:\n  top: 0\n  decay: {half_life: 1d}\n  tiers: [{name: cold}, "
            "{name: hot, enter: 5}]\n  handoff: {tier: hot}\n",
            "line 9: accounts.top: Input should be greater than or equal to 1",
        ),
        (
            "accounts:\n  decay: {half_life: 1d}\n  fit:\n    - {id: x, when: {'a b': 1}}\n"
            "  tiers: [{name: cold}, {name: hot, enter: 5}]\n  handoff: {tier: hot}\n",
            "line 11: accounts.fit[0].when: 'a b' is not a trait path like industry or "
            "address.country",
        ),
        (
            "accounts:\n  decay: {half_life: 1d}\n  free_mail: [GMX.*]\n  tiers: [{name: cold}, "
            "{name: hot, enter: 5}]\n  handoff: {tier: hot}\n",
            "line 10: accounts.free_mail: 'GMX.*' is not a lower-case domain (gmx.* for any "
            "suffix)",
        ),
    ],
)
def test_accounts_section_errors_are_located(section: str, expected: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules_text(BASE + section, "a.yaml")
    assert expected in info.value.problems, info.value.problems


def test_email_domains_and_free_mail() -> None:
    assert email_domain("Ann@Acme.COM") == "acme.com"
    assert email_domain("no-at-sign") is None and email_domain(3) is None
    assert email_domain("@acme.com") is None and email_domain("a@localhost") is None
    free = ["gmail.com", "gmx.de", "yahoo.co.uk", "proton.me", "webmail.org", "hotmail.fr"]
    free += ["example-mail.com", "outlook.com", "icloud.com"]
    for domain in free:
        traits = {"email": f"x@{domain}"}
        assert account_for(None, "identify", None, traits, RULES) is None, domain
    traits = {"email": "bo@acme.com"}
    assert account_for(None, "identify", None, traits, RULES) == ("acme.com", False)


def test_a_group_call_wins_over_the_email_domain() -> None:
    group = account_for(None, "group", "acct-42", {}, RULES)
    assert group == ("acct-42", True)
    assert account_for(group, "identify", None, {"email": "bo@acme.com"}, RULES) == group
    assert account_for(group, "group", "acct-7", {}, RULES) == ("acct-7", True)
    email = account_for(None, "identify", None, {"email": "bo@acme.com"}, RULES)
    assert account_for(email, "group", "acct-42", {}, RULES) == ("acct-42", True)
    no_email = _accounts(ACCOUNTS + "  from_email: false\n")
    assert account_for(None, "identify", None, {"email": "bo@acme.com"}, no_email) is None


def test_three_warm_members_hand_the_account_off_once_naming_them() -> None:
    state = AccountState("acme.com")
    out: list[AccountHandoff] = []
    t = 1_700_000_000_000
    assert apply(state, Contribution("acme.com", "ann", 30.0, t), RULES, 200, out) == "applied"
    assert apply(state, Contribution("acme.com", "bob", 35.0, t), RULES, 200, out) == "applied"
    assert state.tier == 1 and not out  # 65: engaged
    apply(state, Contribution("acme.com", "cy", 40.0, t), RULES, 200, out)
    assert [(h.tier, h.score, [lead for lead, _ in h.leads]) for h in out] == [
        ("target", 105.0, ["cy", "bob", "ann"])
    ]
    apply(state, Contribution("acme.com", "dee", 1.0, t + 1), RULES, 200, out)
    assert len(out) == 1  # armed again only below rearm_below
    # A fourth, weaker member is not summed: the best three are.
    assert [lead for lead, _ in best_members(state, RULES, t)] == ["cy", "bob", "ann"]


def test_fit_from_group_traits_and_rearm() -> None:
    state = AccountState("acct-42")
    out: list[AccountHandoff] = []
    t = 1_700_000_000_000
    traits = {"employees": "1,200", "industry": "software", "address": {"country": "de"}}
    apply(state, Contribution("acct-42", "ann", 0.0, t, traits), RULES, 200, out)
    assert score_at(state, RULES, t) == 25.0
    apply(state, Contribution("acct-42", "ann", 80.0, t + 1), RULES, 200, out)
    assert len(out) == 1 and out[0].fit == 25.0
    # Two half-lives later the member is worth 20: below rearm_below, so armed again.
    apply(state, Contribution("acct-42", "bob", 0.5, t + 1 + 4 * DAY), RULES, 200, out)
    assert state.armed and state.tier == 1
    apply(state, Contribution("acct-42", "ann", 90.0, t + 1 + 4 * DAY), RULES, 200, out)
    assert len(out) == 2 and out[1].seq == 2


def test_fit_alone_hands_off_no_one() -> None:
    rich = _accounts(ACCOUNTS.replace("points: 20", "points: 120"))
    state = AccountState("acct-42")
    out: list[AccountHandoff] = []
    apply(state, Contribution("acct-42", "ann", 0.0, 1, {"employees": 900}), rich, 200, out)
    assert state.tier == 2 and state.armed and out == []
    apply(state, Contribution("acct-42", "ann", 1.0, 2), rich, 200, out)
    assert [h.leads for h in out] == [(("ann", 1.0),)]


def test_a_leave_takes_the_member_out_even_at_the_same_anchor() -> None:
    state = AccountState("acme.com")
    out: list[AccountHandoff] = []
    apply(state, Contribution("acme.com", "ann", 30.0, 5), RULES, 200, out)
    assert apply(state, Contribution("acme.com", "ann", LEFT, 5), RULES, 200, out) == "applied"
    assert score_at(state, RULES, 5) == 0.0
    assert apply(state, Contribution("acme.com", "ann", 30.0, 5), RULES, 200, out) == "stale"
    assert apply(state, Contribution("acme.com", "ann", 10.0, 6), RULES, 200, out) == "applied"
    assert score_at(state, RULES, 6) == 10.0


def test_members_max_keeps_the_best() -> None:
    state = AccountState("acme.com")
    for i, e in enumerate([5.0, 50.0, 1.0, 20.0]):
        apply(state, Contribution("acme.com", f"l{i}", e, 10), RULES, 2, [])
    assert set(state.members) == {"l1", "l3"}


# ------------------------------------------------------------------ properties

LEADS = ("ann", "bob", "cy", "dee", "eve")
_traits = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "employees": st.integers(0, 500),
        "industry": st.sampled_from(["software", "retail"]),
        "address": st.fixed_dictionaries({"country": st.sampled_from(["de", "us"])}),
    },
)
contributions = st.lists(
    st.builds(
        Contribution,
        st.just("acme.com"),
        st.sampled_from(LEADS),
        st.sampled_from([LEFT, 0.0]) | st.floats(0.0, 200.0, allow_nan=False),
        st.integers(0, 10 * DAY),
        _traits,
    ),
    min_size=1,
    max_size=14,
)


def _run(updates: list[Contribution], members_max: int = 200) -> AccountState:
    state = AccountState("acme.com")
    for u in updates:
        apply(state, u, RULES, members_max, [])
    return state


def _aggregate(state: AccountState) -> tuple[Any, ...]:
    t = state.last_ms or 0
    return (state.members, state.traits, state.last_ms, score_at(state, RULES, t))


@settings(max_examples=300, deadline=None)
@given(contributions, st.randoms(use_true_random=False))
def test_the_aggregate_is_the_reference_in_any_order(updates: list[Contribution], rnd: Any) -> None:
    state = _run(updates)
    shuffled = list(updates)
    rnd.shuffle(shuffled)
    other = _run(shuffled)
    assert _aggregate(other) == _aggregate(state)
    t = max(u.anchor_ms for u in updates)
    assert state.last_ms == t
    expected = reference_score("acme.com", updates, RULES, t)
    assert math.isclose(score_at(state, RULES, t), expected, rel_tol=1e-9, abs_tol=1e-9)
    later = t + 3 * DAY
    expected_later = reference_score("acme.com", updates, RULES, later)
    assert math.isclose(score_at(state, RULES, later), expected_later, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=300, deadline=None)
@given(contributions, st.data())
def test_a_redelivered_contribution_is_applied_once(updates: list[Contribution], data: Any) -> None:
    """Redelivery (the outbox re-sends, a consumer re-reads): applying a record again anywhere
    later changes nothing, handoffs included, and the state survives its codec."""
    once_out: list[AccountHandoff] = []
    once = AccountState("acme.com")
    for u in updates:
        apply(once, u, RULES, 200, once_out)
    i = data.draw(st.integers(0, len(updates) - 1))
    j = data.draw(st.integers(i, len(updates) - 1))
    twice_updates = [*updates[: j + 1], updates[i], *updates[j + 1 :]]
    twice_out: list[AccountHandoff] = []
    twice = AccountState("acme.com")
    for k, u in enumerate(twice_updates):
        before = decode_account(encode_account(twice))
        result = apply(twice, u, RULES, 200, twice_out)
        if k == j + 1:
            assert result == "stale" and twice == before
    assert twice == once and twice_out == once_out
    assert decode_account(encode_account(once)) == once
