"""The worker's per-record account rules (runtime/scorer.py) on parsed Segment messages: what a
lead sends its account, what the account's owner applies and hands off, and that rules without
an `accounts:` section send nothing."""

from __future__ import annotations

import orjson

from streamscore.events import Limits, parse_event
from streamscore.events.accounts import parse_account
from streamscore.events.envelope import Event
from streamscore.events.schemas import compile_schema
from streamscore.events.timefmt import format_time_ms
from streamscore.events.types import TopicKind
from streamscore.runtime.accounts import CachedAccount
from streamscore.runtime.lanes import Model
from streamscore.runtime.leads import CachedLead
from streamscore.runtime.scorer import Facts, GroupWork, Scorer
from streamscore.scoring import state
from streamscore.scoring.accounts import AccountState
from streamscore.scoring.rules import CompiledRules, parse_rules_text

T0 = 1_760_000_000_000
LIMITS = Limits(max_age_ms=10**13)
BASE = """version: acct-unit
decay: {half_life: 7d}
engagement:
  - {id: trial, when: {type: trial_signup}, points: 60}
tiers: [{name: cold}, {name: warm, enter: 50}]
handoff: {tier: warm}
"""
ACCOUNTS = """accounts:
  decay: {half_life: 14d}
  fit: [{id: big, when: {employees: {gte: 200}}, points: 30}]
  tiers: [{name: cold}, {name: target, enter: 150}]
  handoff: {tier: target}
"""
PLAIN = parse_rules_text(BASE, "plain.yaml")
WITH_ACCOUNTS = parse_rules_text(BASE + ACCOUNTS, "accounts.yaml")


def segment(kind: TopicKind, time_ms: int = T0, **doc: object) -> Event:
    doc.setdefault("timestamp", format_time_ms(time_ms))
    return parse_event(orjson.dumps(doc), kind, T0 + 10_000, LIMITS)


def cached(lead_id: str) -> CachedLead:
    return CachedLead(lead_id, 0, state.new_lead(lead_id), 0, b"", None)


def scorer() -> Scorer:
    return Scorer(0, 12, "sla", "identity", "dead", False, 100, "accts", "acct-handoffs", 200)


def warm_up(lead: CachedLead, email: str, rules: CompiledRules, w: GroupWork) -> None:
    s, facts = scorer(), Facts()
    ident = segment(TopicKind.PROFILES, type="identify", userId=lead.state.lead_id,
                    messageId=f"i-{email}", traits={"email": email})  # fmt: skip
    trial = segment(TopicKind.DOWNLOADS, T0 + 5, type="track", userId=lead.state.lead_id,
                    event="Trial Started", messageId=f"t-{email}")  # fmt: skip
    assert s.event(lead, ident, T0, w, Model("live", rules), facts)
    assert s.event(lead, trial, T0, w, Model("live", rules), facts)


def test_rules_without_accounts_send_nothing() -> None:
    w = GroupWork()
    lead = cached("ann")
    warm_up(lead, "ann@acme.com", PLAIN, w)
    assert w.records == [] and lead.state.account is None


def test_leads_send_their_engagement_and_the_account_hands_off_once() -> None:
    s, facts = scorer(), Facts()
    w = GroupWork()
    for name in ("ann", "bob", "cy"):
        warm_up(cached(name), f"{name}@acme.com", WITH_ACCOUNTS, w)
    warm_up(cached("solo"), "solo@gmail.com", WITH_ACCOUNTS, w)
    assert {r.topic for r in w.records} == {"accts"}
    records = [parse_account(r.value) for r in w.records]
    assert {r.key for r in w.records} == {b"acme.com"}  # solo has no account: nothing sent
    assert [(r.contribution.lead_id, r.contribution.engagement) for r in records] == [
        ("ann", 0.0), ("ann", 60.0), ("bob", 0.0), ("bob", 60.0), ("cy", 0.0), ("cy", 60.0),
    ]  # fmt: skip
    account = CachedAccount("k", 0, AccountState("acme.com"), 0, b"")
    out = GroupWork()
    for record in records + records:  # every record delivered twice
        s.account(account, record, out, WITH_ACCOUNTS, facts)
    (handoff,) = out.records
    assert (handoff.topic, handoff.key) == ("acct-handoffs", b"acme.com")
    doc = orjson.loads(handoff.value)
    compile_schema("account-handoff.v1.json")(doc)
    assert [m["lead_id"] for m in doc["leads"]] == ["ann", "bob", "cy"] and doc["score"] == 180
    assert facts.edges[("account_member", "applied")] == 6
    assert facts.edges[("account_member", "stale")] == 6
    assert facts.edges[("account_handoff", "target")] == 1


def test_a_group_call_assigns_the_account_and_a_later_one_leaves_it() -> None:
    s, facts = scorer(), Facts()
    w = GroupWork()
    lead = cached("dora")
    call = segment(TopicKind.PROFILES, type="group", userId="dora", groupId="initech",
                   messageId="g1", traits={"employees": 500})  # fmt: skip
    s.event(lead, call, T0, w, Model("live", WITH_ACCOUNTS), facts)
    assert lead.state.account == ("initech", True)
    (joined,) = [parse_account(r.value) for r in w.records]
    assert joined.contribution.traits == {"employees": 500}
    email = segment(TopicKind.PROFILES, T0 + 1, type="identify", userId="dora",
                    messageId="i1", traits={"email": "dora@acme.com"})  # fmt: skip
    s.event(lead, email, T0, w, Model("live", WITH_ACCOUNTS), facts)
    assert lead.state.account == ("initech", True) and len(w.records) == 1
    moved = segment(TopicKind.PROFILES, T0 + 2, type="group", userId="dora", groupId="hooli",
                    messageId="g2", traits={})  # fmt: skip
    s.event(lead, moved, T0, w, Model("live", WITH_ACCOUNTS), facts)
    leave, join = (parse_account(r.value) for r in w.records[1:])
    assert (leave.type, leave.account_id, join.type, join.account_id) == (
        "leave", "initech", "member", "hooli",
    )  # fmt: skip
