"""A replay's scope: which fetched records it keeps, which events it scores, when it is done."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from streamscore.runtime.scope import LeadSample, ReplayScope

TPS = [TopicPartition("t", p) for p in range(3)]


@dataclass(frozen=True)
class Msg:
    offset: int


@dataclass(frozen=True)
class Rec:
    lead_id: str
    time_ms: int


def admit(scope: ReplayScope, rec: Rec) -> bool:
    return scope.admits(cast(Any, rec))  # the scope reads only lead_id and time_ms


fetches = st.dictionaries(
    st.sampled_from(TPS),
    st.lists(st.integers(0, 40), max_size=12, unique=True).map(
        lambda offsets: [Msg(o) for o in sorted(offsets)]
    ),
)
ends = st.dictionaries(st.sampled_from(TPS), st.integers(0, 40))


@given(fetches, ends)
def test_clip_keeps_exactly_the_records_below_each_end(fetched: Any, end: Any) -> None:
    scope = ReplayScope(ends=end)
    kept = {tp: [m for m in msgs if m.offset < end.get(tp, 0)] for tp, msgs in fetched.items()}
    expected = {tp: msgs for tp, msgs in kept.items() if msgs}
    assert scope.clip(fetched) == expected


@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), st.integers(0, 100))),
    st.none() | st.integers(0, 100),
    st.none() | st.integers(0, 100),
    st.frozensets(st.sampled_from(["a", "b", "c", "d", "e"])),
)
def test_admits_the_window_and_the_listed_leads_and_counts_the_rest(
    records: list[tuple[str, int]], since: int | None, until: int | None, ids: frozenset[str]
) -> None:
    scope = ReplayScope(ends={}, from_ms=since, until_ms=until, leads=LeadSample(ids=ids))
    admitted = [r for r in records if admit(scope, Rec(*r))]
    expected = [
        (lead, t)
        for lead, t in records
        if (since is None or t >= since) and (until is None or t <= until) and lead in ids
    ]
    assert admitted == expected
    assert scope.skipped == len(records) - len(expected)


def test_a_sampled_share_is_stable_and_close_to_what_was_asked() -> None:
    leads = [f"lead-{i}" for i in range(20_000)]
    sample = LeadSample(fraction=0.25)
    chosen = [lead for lead in leads if sample.admits(lead)]
    assert abs(len(chosen) / len(leads) - 0.25) < 0.015
    assert chosen == [lead for lead in leads if LeadSample(fraction=0.25).admits(lead)]
    # A larger share keeps every lead a smaller one chose: samples nest.
    assert set(chosen) <= {lead for lead in leads if LeadSample(fraction=0.5).admits(lead)}
    assert all(LeadSample().admits(lead) for lead in leads[:100])
    assert LeadSample(fraction=0.25).describe() == "25.00% of leads"
    assert LeadSample(ids=frozenset({"a", "b"})).describe() == "2 listed leads"


def test_history_ends_at_the_high_watermarks_taken_at_the_start() -> None:
    a, b, c = TPS
    scope = ReplayScope(ends={a: 10, b: 0, c: 5})
    assert scope.highwater(a, 25) == 10  # records appended since are live's, not the replay's
    assert scope.highwater(a, 7) == 7
    assert scope.highwater(a, None) == 10
    assert not scope.reached({a: 10, c: 4})
    assert scope.reached({a: 10, c: 5})  # b had no history: nothing to wait for
