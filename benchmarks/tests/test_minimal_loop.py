"""(c)'s merge: whatever the fetch chunks, each partition's events come out in time order."""

from __future__ import annotations

import random

from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.minimal_loop import Merger, Pending

TOPICS = ("pv", "em", "dl", "un")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1)), max_size=120),
    st.integers(0, 2**32),
)
def test_release_is_time_order_per_partition(placement: list[tuple[int, int]], seed: int) -> None:
    """Events (time = index) spread over 4 topics x 2 partitions, fetched in random chunks."""
    rng = random.Random(seed)
    tps = [TopicPartition(t, p) for t in TOPICS for p in range(2)]
    streams: dict[TopicPartition, list[Pending]] = {tp: [] for tp in tps}
    for i, (topic, part) in enumerate(placement):
        tp = TopicPartition(TOPICS[topic], part)
        streams[tp].append((i, "L", f"e{i}", 1, len(streams[tp])))
    merger = Merger(tps)
    fetched = dict.fromkeys(tps, 0)
    highwater: dict[TopicPartition, int | None] = dict.fromkeys(tps)
    released: list[Pending] = []
    last_offsets: dict[TopicPartition, int] = {}
    while True:
        left = [tp for tp in tps if fetched[tp] < len(streams[tp]) or highwater[tp] is None]
        if not left:
            break
        tp = rng.choice(left)
        take = rng.randint(0, 5)
        chunk = streams[tp][fetched[tp] : fetched[tp] + take]
        merger.buffers[tp] += chunk
        fetched[tp] += len(chunk)
        merger.next_offset[tp] = fetched[tp]
        highwater[tp] = len(streams[tp])  # a fetch response reports the high watermark
        out, offsets = merger.release(highwater)
        released += out
        last_offsets.update(offsets)
    out, offsets = merger.release(highwater)
    released += out
    last_offsets.update(offsets)
    assert sorted(released) == sorted(e for s in streams.values() for e in s)
    for part in range(2):
        mine = [e[0] for e in released if placement[e[0]][1] == part]
        assert mine == sorted(mine)
    assert last_offsets == {tp: len(s) - 1 for tp, s in streams.items() if s}
