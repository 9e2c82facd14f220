"""Identity merge (scoring/identity.py) against a brute-force reference: resolve ids by their
links, score each resolved lead's whole event list with scoring/reference.py.

The protocol is simulated as the workers run it: every record goes to the owner of the lead it
is keyed by, the identity topic's records arrive in order per key but interleave freely with
the inputs, and the absorbed contributions travel through the store's codec as on the wire.
"""

from __future__ import annotations

import math
import re
from collections import deque
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from streamscore.scoring import reference
from streamscore.scoring.engine import decide
from streamscore.scoring.identity import (
    Identity,
    absorb,
    detach,
    judge,
    known,
    note_event,
    request,
)
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import CompiledRules, parse_rules_text
from streamscore.scoring.state import (
    LeadState,
    apply_event,
    contributions_at,
    event_id_hash,
    new_lead,
    score_at,
)
from streamscore.store.codec import decode_lead, encode_lead
from tests.state_support import DAY, HOUR, MIN, SHAPES, T0, Ev, variant_yaml

A, K = "anon-1", "user-1"
ALIAS = Ev("alias")


def uncapped(half_life: str, penalties: bool) -> CompiledRules:
    """The compact rules without caps: with caps, which of two ids' awards a window grants
    depends on arrival order even for one lead (see the capped test below)."""
    text = re.sub(r", cap: \{[^}]*\}", "", variant_yaml(half_life, penalties))
    return parse_rules_text(text.replace("version: v-", "version: u-"), "uncapped.yaml")


RULES = (uncapped("1h", False), uncapped("1h", True), uncapped("14d", False))


class Worker:
    """Both leads' owners, applying records as scoring/runtime does (without Redis or Kafka)."""

    def __init__(self, rules: CompiledRules, dedup_ms: int) -> None:
        self.rules = rules
        self.dedup_ms = dedup_ms
        self.states: dict[str, LeadState] = {A: new_lead(A), K: new_lead(K)}
        self.identity: dict[str, deque[tuple[Any, ...]]] = {A: deque(), K: deque()}
        self.outputs: list[Output] = []
        self.absorbs: list[tuple[Any, ...]] = []
        self.forwarded = 0

    def event(self, lead: str, event_id: str, t: int, ev: Ev, link: str | None) -> None:
        state = self.states[lead]
        ident = state.identity
        if ident is not None and ident.merged_into is not None:
            self.identity[ident.merged_into].append(("event", event_id, t, ev))
            self.forwarded += 1
            return
        note_event(state, anonymous=lead == A)
        decision = decide(ev, self.rules)
        fresh = apply_event(state, self.rules, event_id, t, decision, self.dedup_ms, self.outputs)
        if fresh and link is not None and request(state, link, t, 100) == "requested":
            self.identity[link].append(("merge_into", lead, event_id, t))

    def identity_record(self, lead: str) -> None:
        record = self.identity[lead].popleft()
        state = self.states[lead]
        if record[0] == "event":
            _, event_id, t, ev = record
            self.event(lead, event_id, t, ev, None)
        elif record[0] == "merge_into":
            _, into, event_id, t = record
            if judge(state, into, allow_known=False) == "merge":
                wire = encode_lead(detach(state, into))
                absorb_record = ("absorb", lead, wire, event_id, t)
                self.absorbs.append((into, absorb_record))
                self.identity[into].append(absorb_record)
        else:
            _, from_id, wire, event_id, t = record
            other = decode_lead(wire, from_id)
            absorb(state, other, from_id, self.rules, event_id, t, self.outputs)


def reference_lead(
    rules: CompiledRules, events: list[tuple[str, str, int, Ev, str | None]], dedup_ms: int
) -> reference.LeadState:
    """Every event of either id, on one lead, in input order."""
    ref = reference.LeadState(K)
    for _, event_id, t, ev, _ in events:
        reference.apply_event(ref, rules, event_id, t, decide(ev, rules), dedup_ms)
    return ref


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-7)


def scenario(draw: st.DrawFn) -> tuple[list[tuple[str, str, int, Ev, str | None]], list[int]]:
    """Anonymous events (A), known ones (K) and one alias on K naming A, at any times and in
    any input order, some of them tracker retries (an earlier event of the same lead again);
    and the scheduler's choices."""
    n = draw(st.integers(1, 25))
    clock = T0
    events: list[tuple[str, str, int, Ev, str | None]] = []
    for i in range(n):
        if events and draw(st.integers(0, 5)) == 0:
            events.append(events[draw(st.integers(0, len(events) - 1))])
            continue
        clock += draw(st.sampled_from([0, MIN, 30 * MIN, 2 * HOUR, DAY]))
        lead = draw(st.sampled_from([A, K]))
        shape = SHAPES[draw(st.integers(0, len(SHAPES) - 1))]
        events.append(
            (lead, f"e{i}", clock - draw(st.sampled_from([0, 0, 3 * MIN, 6 * HOUR])), shape, None)
        )
    alias_t = T0 + draw(st.integers(0, max(clock - T0, 1)))
    events.insert(draw(st.integers(0, len(events))), (K, "alias-1", alias_t, ALIAS, A))
    choices = draw(st.lists(st.integers(0, 2), min_size=1, max_size=80))
    return events, choices


def run(
    rules: CompiledRules,
    events: list[tuple[str, str, int, Ev, str | None]],
    choices: list[int],
    dedup_ms: int,
) -> Worker:
    """Deliver inputs and identity records in the interleaving `choices` picks."""
    w = Worker(rules, dedup_ms)
    inputs = deque(events)
    i = 0
    while inputs or w.identity[A] or w.identity[K]:
        sources = [s for s, q in (("in", inputs), (A, w.identity[A]), (K, w.identity[K])) if q]
        source = sources[choices[i % len(choices)] % len(sources)]
        i += 1
        if source == "in":
            lead, event_id, t, ev, link = inputs.popleft()
            w.event(lead, event_id, t, ev, link)
        else:
            w.identity_record(source)
    return w


@settings(max_examples=300, deadline=None)
@given(data=st.data(), rules=st.sampled_from(RULES), dedup_ms=st.sampled_from([0, 400 * DAY]))
def test_any_interleaving_ends_as_the_resolved_reference(
    data: st.DataObject, rules: CompiledRules, dedup_ms: int
) -> None:
    events, choices = data.draw(st.composite(scenario)())
    w = run(rules, events, choices, dedup_ms)
    ref = reference_lead(rules, events, dedup_ms)
    event(f"events forwarded after the merge: {min(w.forwarded, 2)}")
    event(f"anonymous points absorbed: {decode_lead(w.absorbs[0][1][2], A).anchor_ms is not None}")
    merged, emptied = w.states[K], w.states[A]
    assert merged.identity is not None and merged.identity.merged == {
        A: next(t for _, i, t, _, _ in events if i == "alias-1")
    }
    assert emptied.identity is not None and emptied.identity.merged_into == K
    assert emptied.anchor_ms is None and not emptied.points and emptied.profile is None
    at = max(t for _, _, t, _, _ in events) + HOUR
    assert close(score_at(merged, rules, at), reference.score_at(ref, rules, at))
    ours = {r: p for r, p in contributions_at(merged, rules, at) if abs(p) > 1e-9}
    h_ms = rules.half_life_s * 1000.0
    theirs: dict[str, float] = {}
    for ti, rule, p in ref.awards:
        decays = p > 0 or rules.decay_penalties
        rid = rules.rule_ids[rule]
        theirs[rid] = theirs.get(rid, 0.0) + (p * math.pow(2.0, (ti - at) / h_ms) if decays else p)
    for a in ref.attributes.values():
        for rid, p in a.reasons:
            theirs[rid] = theirs.get(rid, 0.0) + p
    theirs = {r: p for r, p in theirs.items() if abs(p) > 1e-9}
    assert ours.keys() == theirs.keys()
    assert all(close(ours[r], theirs[r]) for r in ours)
    assert close(merged.fit, reference.fit_points(ref))
    assert merged.bant == reference.bant_mask(ref)
    assert (merged.flag == 1 or merged.fit_disqualify) == reference.disqualified(ref)
    if dedup_ms:
        assert set(merged.seen or {}) <= {event_id_hash(i) for i in ref.seen}


@settings(max_examples=200, deadline=None)
@given(data=st.data(), rules=st.sampled_from(RULES))
def test_an_absorb_applied_twice_is_applied_once(data: st.DataObject, rules: CompiledRules) -> None:
    events, choices = data.draw(st.composite(scenario)())
    w = run(rules, events, choices, 7 * DAY)
    into, record = w.absorbs[0]
    before = encode_lead(w.states[into])
    out: list[Output] = []
    _, from_id, wire, event_id, t = record
    assert not absorb(w.states[into], decode_lead(wire, from_id), from_id, rules, event_id, t, out)
    assert out == [] and encode_lead(w.states[into]) == before


def warm_and_hot_rules() -> CompiledRules:
    text = """version: probe
decay: {half_life: 7d}
engagement:
  - {id: pricing, when: {type: page_view, properties.path: /pricing}, points: 25}
  - {id: trial, when: {type: trial_signup}, points: 70}
tiers:
  - {name: cold}
  - {name: warm, enter: 50, exit: 45}
  - {name: hot, enter: 100, exit: 90}
handoff: {tier: hot}
"""
    return parse_rules_text(text, "probe.yaml")


def test_the_probe_a_merge_that_qualifies_hands_off_once_with_cause_merge() -> None:
    rules = warm_and_hot_rules()
    anon, user = new_lead(A), new_lead(K)
    out: list[Output] = []
    pricing = decide(Ev("page_view", {"path": "/pricing"}), rules)
    for i in range(3):
        note_event(anon, anonymous=True)
        apply_event(anon, rules, f"a{i}", T0, pricing, 0, out)
    note_event(user, anonymous=False)
    apply_event(user, rules, "k0", T0, decide(Ev("trial_signup"), rules), 0, out)
    assert [o.new_tier for o in out] == ["warm", "warm"]
    assert score_at(anon, rules, T0) == 75 and score_at(user, rules, T0) == 70
    assert anon.anonymous and not user.anonymous and not known(anon) and known(user)
    assert request(user, A, T0, 100) == "requested"
    assert request(user, A, T0 + 1, 100) == "linked"  # every identify names A again
    assert judge(anon, K, allow_known=False) == "merge"
    taken = decode_lead(encode_lead(detach(anon, K)), A)
    merged: list[Output] = []
    assert absorb(user, taken, A, rules, "alias-1", T0, merged)
    assert [(o.kind, o.new_tier, o.cause, o.event_id) for o in merged] == [
        ("tier_change", "hot", "merge", "alias-1"),
        ("handoff", "hot", "merge", "alias-1"),
    ]
    assert merged[-1].score == 145
    assert not absorb(user, taken, A, rules, "alias-1", T0, merged)
    assert len(merged) == 2
    assert judge(anon, K, allow_known=False) == "duplicate"
    assert judge(anon, "user-2", allow_known=False) == "refused_taken"


def test_known_leads_are_refused_unless_the_settings_allow() -> None:
    rules = warm_and_hot_rules()
    other = new_lead("user-2")
    note_event(other, anonymous=False)
    apply_event(other, rules, "x", T0, decide(Ev("trial_signup"), rules), 0, [])
    assert judge(other, K, allow_known=False) == "refused_known"
    assert judge(other, K, allow_known=True) == "merge"
    # Seen anonymously first, then under a userId: known for good.
    mixed = new_lead("m")
    note_event(mixed, anonymous=True)
    apply_event(mixed, rules, "y", T0, decide(Ev("page_view"), rules), 0, [])
    note_event(mixed, anonymous=False)
    note_event(mixed, anonymous=True)
    assert judge(mixed, K, allow_known=False) == "refused_known"
    # Never seen: mergeable (the alias came before its anonymous events).
    assert judge(new_lead("fresh"), K, allow_known=False) == "merge"
    # A cycle: K was merged into A, so A cannot merge into K.
    a = new_lead(A)
    a.identity = Identity(merged={K: T0})
    assert judge(a, K, allow_known=True) == "refused_cycle"
    assert judge(new_lead(K), K, allow_known=True) == "refused_cycle"


def test_max_links_bounds_what_a_lead_absorbs() -> None:
    state = new_lead(K)
    assert [request(state, f"a{i}", T0, 2) for i in range(3)] == [
        "requested", "requested", "refused_limit",
    ]  # fmt: skip


def test_capped_windows_merge_up_to_the_cap_and_earned_points_stay() -> None:
    rules = parse_rules_text(variant_yaml("1h", False), "capped.yaml")
    view = decide(Ev("page_view", {"path": "/blog"}), rules)
    anon, user = new_lead(A), new_lead(K)
    for i in range(2):
        apply_event(anon, rules, f"a{i}", T0 + i, view, 0, [])
        apply_event(user, rules, f"k{i}", T0 + i, view, 0, [])
    before = score_at(anon, rules, T0 + 5) + score_at(user, rules, T0 + 5)
    absorb(user, detach(anon, K), A, rules, "alias", T0 + 5, [])
    assert close(score_at(user, rules, T0 + 5), before)  # 6 + 6: nothing taken back
    assert user.caps == {"view": {(T0 + 0) // (30 * MIN): 9.0}}  # the window is full
    at_k9 = score_at(user, rules, T0 + 6)
    apply_event(user, rules, "k9", T0 + 6, view, 0, [])
    assert score_at(user, rules, T0 + 6) == at_k9  # and earns nothing more


def test_identity_and_anonymity_round_trip_through_the_codec() -> None:
    state = new_lead(A)
    state.anonymous = True
    state.identity = Identity("user-9", {"x": T0}, {"y": T0 + 1})
    again = decode_lead(encode_lead(state), A)
    assert again.anonymous and again.identity == state.identity
    assert decode_lead(encode_lead(new_lead(A)), A).identity is None
