"""The forgotten sets' members, what they block, and the outbox withdrawals of a forget."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given

from streamscore.scoring.outputs import Output
from streamscore.store.forgotten import (
    FOREVER_MS,
    ForgottenLeads,
    member,
    parse_member,
    without_lead,
)
from streamscore.store.outbox import Record, decode_entry, encode_outputs

OUTPUT = Output(
    "handoff", "lead-1", 1, "warm", "hot", 91.5, 70.0, 21.5, 2, 3, (("trial", 25.0),),
    "evt-1", 1_760_000_000_000, "event", "rules-1",
)  # fmt: skip


@given(st.text(alphabet="0123456789abcdef", min_size=1, max_size=24), st.integers(0, 2**62))
def test_a_member_reads_back_as_written(digest: str, forget_ms: int) -> None:
    assert parse_member(member(digest, forget_ms)) == (digest, forget_ms)


def test_a_bare_or_unreadable_member_forgets_for_ever() -> None:
    assert parse_member("abc") == ("abc", FOREVER_MS)
    assert parse_member("abc@soon") == ("abc", FOREVER_MS)


forgets = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from("abcde"), st.integers(0, 100)), max_size=12
)


@given(forgets, st.sampled_from("abcdef"), st.integers(-1, 101))
def test_a_record_is_blocked_iff_some_forget_of_its_lead_is_at_or_after_it(
    rows: list[tuple[int, str, int]], digest: str, time_ms: int
) -> None:
    members: dict[int, list[str]] = {}
    for group, d, when in rows:
        if member(d, when) not in members.get(group, []):  # a set: each member once
            members.setdefault(group, []).append(member(d, when))
    known = ForgottenLeads.from_members(members)
    # Brute force: any forget of this lead at or after the record's time blocks it.
    assert known.blocks(digest, time_ms) == any(
        d == digest and time_ms <= when for _, d, when in rows
    )
    for group in range(4):
        assert known.size(group) == len(members.get(group, []))
    assert bool(known) == bool(rows)


def test_withdrawals_take_out_the_lead_and_only_it() -> None:
    mine = Record("ss.v1.sla-breaches", b"lead-1", b"{}")
    other_record = Record("ss.v1.sla-breaches", b"lead-2", b"{}")
    other = OUTPUT._replace(lead_id="lead-2")
    entries = [
        ("1-0", encode_outputs([OUTPUT, other], 7, [mine, other_record])),
        ("2-0", encode_outputs([other], 8)),
        ("3-0", encode_outputs([OUTPUT], 9, [mine])),
        ("4-0", encode_outputs([], 0, [mine])),
    ]
    rewrites = without_lead(entries, "lead-1")
    assert [(r.entry_id, r.withdrawn) for r in rewrites] == [("1-0", 2), ("3-0", 2), ("4-0", 1)]
    outputs, records = decode_entry(rewrites[0].replacement)
    assert [(o.output, o.scored_at) for o in outputs] == [(other, 7)]
    assert records == [other_record]
    # Nothing left of an entry: it is removed, not replaced.
    assert rewrites[1].replacement == b"" and rewrites[2].replacement == b""
