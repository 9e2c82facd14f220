"""Aligner: a deterministic k-way merge of partitions, that waits for partitions behind."""

from __future__ import annotations

import heapq
import random
from collections import Counter
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from streamscore.runtime.aligner import Aligner


@dataclass(frozen=True)
class Rec:
    time_ms: int
    event_id: str
    offset: int


def key(r: Rec) -> tuple[int, str]:
    return (r.time_ms, r.event_id)


def offset(r: Rec) -> int:
    return r.offset


NAMES = ["a", "b", "c", "d"]  # sorted, so rank = position, as assign() ranks by sort order
T_ASSIGN = 1_000_000


@st.composite
def partitions(draw: st.DrawFn, min_size: int = 1) -> dict[str, list[Rec]]:
    """Some partitions, each with records in offset order; times and ids repeat on purpose."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=min_size, max_size=4, unique=True))
    out = {}
    for name in sorted(names):
        first = draw(st.integers(0, 1000))
        items = draw(st.lists(st.tuples(st.integers(0, 20), st.sampled_from("xyz")), max_size=12))
        out[name] = [Rec(t, i, first + n) for n, (t, i) in enumerate(items)]
    return out


def merged(parts: dict[str, list[Rec]]) -> list[tuple[str, Rec]]:
    """The oracle: heapq.merge by (event time, event id, partition rank)."""
    rank = {p: i for i, p in enumerate(sorted(parts))}
    streams = [[(p, r) for r in recs] for p, recs in sorted(parts.items())]
    return list(heapq.merge(*streams, key=lambda pr: (key(pr[1]), rank[pr[0]])))


def make(parts: dict[str, list[Rec]], max_wait_ms: int = 200) -> Aligner[str, Rec]:
    aligner: Aligner[str, Rec] = Aligner(key, offset, max_wait_ms)
    aligner.assign(parts, T_ASSIGN)
    return aligner


def push_all(aligner: Aligner[str, Rec], parts: dict[str, list[Rec]], chunk: int = 3) -> None:
    for p, recs in parts.items():
        for start in range(0, len(recs), chunk):
            part = recs[start : start + chunk]
            aligner.push(p, part)


def drain(aligner: Aligner[str, Rec], now_ms: int, limits: list[int]) -> list[tuple[str, Rec]]:
    out: list[tuple[str, Rec]] = []
    for limit in limits:
        out += aligner.pop_ready(now_ms, limit)
    while batch := aligner.pop_ready(now_ms, 1000):
        out += batch
    return out


@settings(max_examples=50, deadline=None)
@given(
    parts=partitions(),
    chunk=st.integers(1, 5),
    limits=st.lists(st.integers(1, 6), max_size=5),
)
def test_caught_up_partitions_release_exactly_the_merge(
    parts: dict[str, list[Rec]], chunk: int, limits: list[int]
) -> None:
    aligner = make(parts)
    push_all(aligner, parts, chunk)
    for p in parts:
        aligner.note_position(p, 0, T_ASSIGN)
    out = drain(aligner, T_ASSIGN, limits)
    assert out == merged(parts)
    # nothing lost or duplicated, each partition's own order kept
    assert Counter(out) == Counter((p, r) for p, recs in parts.items() for r in recs)
    for p, recs in parts.items():
        assert [r for q, r in out if q == p] == recs
    assert aligner.buffered() == 0 and aligner.caught_up()


@settings(max_examples=30, deadline=None)
@given(parts=partitions(), max_wait_ms=st.integers(1, 10_000), data=st.data())
def test_an_empty_partition_that_is_behind_blocks_until_max_wait(
    parts: dict[str, list[Rec]], max_wait_ms: int, data: st.DataObject
) -> None:
    blocked = "z"  # ranked after the others; empty and not caught up
    aligner = make({**parts, blocked: []}, max_wait_ms)
    push_all(aligner, parts)
    for p in parts:
        aligner.note_position(p, data.draw(st.sampled_from([0, None])), T_ASSIGN)
    aligner.note_position(blocked, None, T_ASSIGN)
    early = T_ASSIGN + data.draw(st.integers(0, max_wait_ms - 1))
    assert aligner.pop_ready(early, 1000) == []
    assert aligner.buffered() == sum(len(r) for r in parts.values())
    # Once it has been silent for max_wait_ms, the others go ahead without it.
    late = T_ASSIGN + max_wait_ms + data.draw(st.integers(0, 1000))
    for p in parts:
        aligner.note_position(p, 0, late)
    assert drain(aligner, late, []) == merged(parts)


@settings(max_examples=50, deadline=None)
@given(parts=partitions(), data=st.data())
def test_catching_up_unblocks_at_once(parts: dict[str, list[Rec]], data: st.DataObject) -> None:
    aligner = make({**parts, "z": []}, max_wait_ms=60_000)
    push_all(aligner, parts)
    for p in parts:
        aligner.note_position(p, 0, T_ASSIGN)
    assert aligner.pop_ready(T_ASSIGN + 1, 1000) == []
    aligner.note_position("z", 0, T_ASSIGN + 2)
    assert drain(aligner, T_ASSIGN + 2, []) == merged(parts)
    # Falling behind again (new data at the broker) blocks again, for a fresh max_wait_ms.
    aligner.push("a" if "a" in parts else next(iter(parts)), [Rec(0, "x", 10**6)])
    aligner.note_position("z", None, T_ASSIGN + 5)
    assert aligner.pop_ready(T_ASSIGN + 5 + 59_999, 1000) == []
    assert len(aligner.pop_ready(T_ASSIGN + 5 + 60_000, 1000)) == 1


@settings(max_examples=50, deadline=None)
@given(parts=partitions(min_size=2), data=st.data())
def test_release_stops_where_a_partition_behind_runs_dry(
    parts: dict[str, list[Rec]], data: st.DataObject
) -> None:
    behind = data.draw(st.sampled_from(sorted(parts)))
    aligner = make(parts)
    push_all(aligner, parts)
    for p in parts:
        aligner.note_position(p, 0 if p != behind else None, T_ASSIGN)
    full = merged(parts)
    out = drain(aligner, T_ASSIGN, [])
    if parts[behind]:
        # Everything up to and including the last record of `behind`, then a stop: what comes
        # next might sort after records `behind` has not fetched yet.
        last = max(i for i, (p, _) in enumerate(full) if p == behind)
        assert out == full[: last + 1]
    else:
        assert out == []
    # More records for it let the merge continue; the result is the merge of everything.
    extra = [
        Rec(t, "x", 5000 + n)
        for n, t in enumerate(data.draw(st.lists(st.integers(0, 20), max_size=4)))
    ]
    if extra:
        aligner.push(behind, extra)
    aligner.note_position(behind, 0, T_ASSIGN)
    rest = drain(aligner, T_ASSIGN, [])
    remaining = {p: [r for q, r in full if q == p and (q, r) not in out] for p in parts}
    remaining[behind] = remaining[behind] + extra
    assert rest == merged(remaining)


@settings(max_examples=50, deadline=None)
@given(parts=partitions(), data=st.data())
def test_first_offset_is_the_first_buffered_record(
    parts: dict[str, list[Rec]], data: st.DataObject
) -> None:
    aligner = make(parts)
    for p in parts:
        assert aligner.first_offset(p) is None  # nothing fetched yet
    push_all(aligner, parts)
    for p in parts:
        aligner.note_position(p, 0, T_ASSIGN)
    released: list[tuple[str, Rec]] = []
    for limit in data.draw(st.lists(st.integers(1, 4), max_size=6)):
        released += aligner.pop_ready(T_ASSIGN, limit)
        for p, recs in parts.items():
            pending = recs[sum(1 for q, _ in released if q == p) :]
            assert aligner.first_offset(p) == (pending[0].offset if pending else None)
            assert aligner.buffered(p) == len(pending)


@settings(max_examples=50, deadline=None)
@given(parts=partitions(min_size=2), data=st.data())
def test_revoke_drops_buffers(parts: dict[str, list[Rec]], data: st.DataObject) -> None:
    aligner = make(parts)
    push_all(aligner, parts)
    gone = data.draw(st.sampled_from(sorted(parts)))
    for p in parts:
        # The revoked partition is behind: had it stayed, it would block.
        aligner.note_position(p, 0 if p != gone else None, T_ASSIGN)
    aligner.revoke([gone])
    assert aligner.buffered(gone) == 0
    assert aligner.first_offset(gone) is None
    aligner.push(gone, [Rec(0, "x", 99)])  # a late fetch for it is ignored
    assert aligner.buffered(gone) == 0
    kept = {p: recs for p, recs in parts.items() if p != gone}
    assert drain(aligner, T_ASSIGN, []) == merged(kept)
    assert aligner.caught_up()


def test_caught_up_needs_every_partition_caught_up_and_nothing_buffered() -> None:
    aligner = make({"a": [], "b": []})
    assert not aligner.caught_up()
    aligner.push("a", [Rec(1, "x", 0)])
    aligner.note_position("a", 0, T_ASSIGN)
    aligner.note_position("b", 0, T_ASSIGN)
    assert not aligner.caught_up()
    assert aligner.pop_ready(T_ASSIGN, 10) == [("a", Rec(1, "x", 0))]
    assert aligner.caught_up()


def test_a_partition_known_to_be_behind_holds_the_merge_for_max_wait() -> None:
    """Records at the broker not yet fetched hold the merge back, for up to max_wait_ms."""
    max_wait = 200
    aligner: Aligner[str, Rec] = Aligner(key, offset, max_wait_ms=max_wait)
    aligner.assign(["p", "q"], T_ASSIGN)
    aligner.push("p", [Rec(10, "p0", 0), Rec(30, "p1", 1)])
    aligner.note_position("p", 0, T_ASSIGN)
    aligner.note_position("q", 5, T_ASSIGN)  # five records at the broker, none fetched yet
    assert aligner.pop_ready(T_ASSIGN + max_wait - 1, 100) == []
    aligner.push("q", [Rec(20, "q0", 0)])
    aligner.note_position("q", 4, T_ASSIGN + max_wait - 1)
    released = [r for _, r in aligner.pop_ready(T_ASSIGN + max_wait - 1, 100)]
    assert released[:2] == [Rec(10, "p0", 0), Rec(20, "q0", 0)]


@settings(max_examples=50, deadline=None)
@given(max_wait_ms=st.integers(1, 10_000), waited_ms=st.integers(0, 10**9), backlog=st.integers(1))
def test_a_partition_with_unread_records_holds_the_merge_past_max_wait(
    max_wait_ms: int, waited_ms: int, backlog: int
) -> None:
    """Exact replays with the default settings: however long past `max_wait_ms`, nothing is
    released ahead of a partition whose records the broker holds and the fetch has not brought
    yet; once they arrive, the merge is the exact one."""
    aligner: Aligner[str, Rec] = Aligner(key, offset, max_wait_ms=max_wait_ms)
    aligner.assign(["p", "q"], T_ASSIGN)
    aligner.push("p", [Rec(10, "p0", 0), Rec(30, "p1", 1)])
    aligner.note_position("p", 0, T_ASSIGN)
    aligner.note_position("q", backlog, T_ASSIGN)
    late = T_ASSIGN + max_wait_ms + waited_ms
    assert aligner.pop_ready(late, 100) == []
    aligner.push("q", [Rec(20, "q0", 0)])
    aligner.note_position("q", 0, late)
    assert [r for _, r in aligner.pop_ready(late, 100)] == [
        Rec(10, "p0", 0),
        Rec(20, "q0", 0),
        Rec(30, "p1", 1),
    ]


@settings(max_examples=100, deadline=None)
@given(parts=partitions(), high=st.integers(2, 6), rng=st.randoms(use_true_random=False))
def test_flow_control_bounds_every_buffer_and_keeps_the_exact_merge(
    parts: dict[str, list[Rec]], high: int, rng: random.Random
) -> None:
    """A fetch loop that fetches unevenly and obeys flow(): bounded buffers, no stall."""
    most_per_fetch = 4
    aligner = make(parts, max_wait_ms=10**9)  # never gives up on a partition: exact merge
    fetched = dict.fromkeys(parts, 0)
    paused: set[str] = set()
    out: list[tuple[str, Rec]] = []
    total = sum(len(recs) for recs in parts.values())
    for _ in range(10_000):
        for p, recs in parts.items():
            if p in paused or fetched[p] == len(recs) or rng.random() < 0.5:
                continue
            chunk = recs[fetched[p] : fetched[p] + rng.randint(1, most_per_fetch)]
            fetched[p] += len(chunk)
            aligner.push(p, chunk)
        for p, recs in parts.items():
            aligner.note_position(p, len(recs) - fetched[p], T_ASSIGN)
        out += aligner.pop_ready(T_ASSIGN, rng.randint(1, 6))
        pause, resume = aligner.flow(paused, high)
        assert not set(pause) & paused and set(resume) <= paused
        paused = (paused | set(pause)) - set(resume)
        for p in parts:
            # A partition is paused at `high`, so at most one fetch lands beyond it.
            assert aligner.buffered(p) < high + most_per_fetch
        # A paused partition holds records, so the merge never waits on it.
        assert all(aligner.buffered(p) > 0 for p in paused)
        if len(out) == total:
            break
    assert out == merged(parts)
    assert not paused


@settings(max_examples=50, deadline=None)
@given(parts=partitions(), grace=st.integers(1, 50), data=st.data())
def test_a_grace_holds_the_merge_at_the_first_record_not_due(
    parts: dict[str, list[Rec]], grace: int, data: st.DataObject
) -> None:
    """Records go in merge order, each once now >= its time + grace; the rest waits, in order."""
    aligner: Aligner[str, Rec] = Aligner(key, offset, 200, lambda r: r.time_ms + grace)
    aligner.assign(parts, T_ASSIGN)
    push_all(aligner, parts)
    for p in parts:
        aligner.note_position(p, 0, T_ASSIGN)
    full = merged(parts)
    now = data.draw(st.integers(0, 20 + grace))
    released = drain(aligner, now, [])
    due = 0
    while due < len(full) and full[due][1].time_ms + grace <= now:
        due += 1
    assert released == full[:due]
    assert released + drain(aligner, 10**6, []) == full
