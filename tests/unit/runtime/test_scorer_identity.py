"""The worker's per-record identity rules (runtime/scorer.py) on parsed Segment messages: what
each step writes to the identity and dead-letter topics, and what it counts."""

from __future__ import annotations

import orjson

from streamscore.events import Limits, parse_event
from streamscore.events.envelope import Event
from streamscore.events.identity import parse_identity
from streamscore.events.schemas import compile_schema
from streamscore.events.timefmt import format_time_ms
from streamscore.events.types import TopicKind
from streamscore.runtime.lanes import Model
from streamscore.runtime.leads import CachedLead
from streamscore.runtime.scorer import Facts, GroupWork, Scorer
from streamscore.scoring import state
from tests.state_support import RULES_1H, T0

IDENTITY, DEAD = "identity", "dead"
LIMITS = Limits(max_age_ms=10**13)

LIVE_1H = Model("live", RULES_1H)


def segment(kind: TopicKind, **doc: object) -> Event:
    doc.setdefault("timestamp", format_time_ms(T0))
    return parse_event(orjson.dumps(doc), kind, T0, LIMITS)


def cached(lead_id: str) -> CachedLead:
    return CachedLead(lead_id, 0, state.new_lead(lead_id), 0, b"", None)


def scorer(merge_known: bool = False) -> Scorer:
    return Scorer(0, 12, "sla", IDENTITY, DEAD, merge_known, 100)


def test_an_identify_with_both_ids_asks_once_and_the_merge_goes_round() -> None:
    s, facts = scorer(), Facts()
    anon, user = cached("anon-1"), cached("user-1")
    page = segment(TopicKind.PAGE_VIEWS, type="page", anonymousId="anon-1", messageId="p1",
                   properties={"path": "/pricing"})  # fmt: skip
    assert page.anonymous and s.event(anon, page, T0, GroupWork(), LIVE_1H, facts)
    w = GroupWork()
    for i in range(2):  # every identify of the session names the anonymous id again
        ident = segment(TopicKind.PROFILES, type="identify", userId="user-1",
                        anonymousId="anon-1", messageId=f"i{i}", traits={})  # fmt: skip
        s.event(user, ident, T0, w, LIVE_1H, facts)
    (ask,) = w.records
    assert (ask.topic, ask.key) == (IDENTITY, b"anon-1")
    request = parse_identity(ask.value)
    assert (request.type, request.other, request.event_id) == ("merge_into", "user-1", "i0")
    w = GroupWork()
    s.identity(anon, request, (IDENTITY, 0, 7), T0, w, LIVE_1H, facts)
    (handover,) = w.records
    absorb = parse_identity(handover.value)
    assert handover.key == b"user-1" and absorb.type == "absorb"
    w = GroupWork()
    s.identity(user, absorb, (IDENTITY, 0, 8), T0, w, LIVE_1H, facts)
    s.identity(user, absorb, (IDENTITY, 0, 9), T0, w, LIVE_1H, facts)  # a redelivery
    assert user.state.identity is not None and list(user.state.identity.merged) == ["anon-1"]
    assert state.score_at(user.state, RULES_1H, T0) > 0 == state.score_at(anon.state, RULES_1H, T0)
    # A later anonymous event is forwarded, keyed by the known lead, and scores there.
    w = GroupWork()
    late = segment(TopicKind.PAGE_VIEWS, type="page", anonymousId="anon-1", messageId="p2",
                   properties={"path": "/pricing"})  # fmt: skip
    s.event(anon, late, T0, w, LIVE_1H, facts)
    (forward,) = w.records
    assert forward.key == b"user-1"
    before = state.score_at(user.state, RULES_1H, T0)
    s.identity(
        user,
        parse_identity(forward.value),
        (IDENTITY, 0, 10),
        T0,
        w,
        LIVE_1H,
        facts,
    )
    assert state.score_at(user.state, RULES_1H, T0) > before
    assert facts.edges == {("identity", "requested"): 1, ("identity", "merged"): 1,
                           ("forwarded", ""): 1}  # fmt: skip


def test_a_known_lead_is_refused_with_a_dead_letter_unless_allowed() -> None:
    for merge_known, topic in ((False, DEAD), (True, IDENTITY)):
        s, facts = scorer(merge_known), Facts()
        known = cached("user-2")
        page = segment(TopicKind.PAGE_VIEWS, type="page", userId="user-2", messageId="p1")
        s.event(known, page, T0, GroupWork(), LIVE_1H, facts)
        w = GroupWork()
        ask = segment(TopicKind.PROFILES, type="alias", userId="user-1", previousId="user-2",
                      messageId="a1")  # fmt: skip
        s.event(cached("user-1"), ask, T0, w, LIVE_1H, facts)
        request = parse_identity(w.records[0].value)
        w = GroupWork()
        s.identity(known, request, (IDENTITY, 3, 41), T0, w, LIVE_1H, facts)
        (record,) = w.records
        assert record.topic == topic
        if not merge_known:
            letter = orjson.loads(record.value)
            assert letter["reason"] == "merge_refused" and "refused_known" in letter["detail"]
            compile_schema("dead-letter.v1.json")(letter)
            assert (letter["source_topic"], letter["partition"], letter["offset"]) == (
                IDENTITY,
                3,
                41,
            )
            assert facts.edges[("identity", "refused_known")] == 1
            assert known.state.identity is None or known.state.identity.merged_into is None
