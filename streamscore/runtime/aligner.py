"""Merge records of many partitions into one deterministic order, by event time.

A lead's events arrive on several topics, and how their fetches interleave is chance. Applying
them in fetch order would make hysteresis (and so handoffs) depend on that chance. The aligner
holds records per partition and releases them as a k-way merge by (event time, event id,
partition rank): it only releases the smallest head when every other assigned partition either
has a buffered head to compare with, or is caught up with its high watermark (nothing more
exists at the broker). A partition whose backlog is not known yet (never fetched) is waited for
at most `max_wait_ms`. So a replay, or a backlog after an outage, merges exactly and gives the
same handoffs on every run with the default settings; live, only caught-up partitions are
involved and the merge adds no wait beyond a fetch.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
P = TypeVar("P", bound=Hashable)


class Aligner(Generic[P, T]):
    """Per-partition buffers released in merge order; pure, the caller passes `now_ms`."""

    def __init__(
        self,
        key: Callable[[T], tuple[int, str]],
        offset: Callable[[T], int],
        max_wait_ms: int,
        not_before: Callable[[T], int] | None = None,
    ) -> None:
        self._key = key
        self._offset = offset
        self._max_wait_ms = max_wait_ms
        #: When a record may go at the earliest (ms, same clock as now_ms); None: at once. The
        #: merge stops at the first record that may not go yet, as at a partition to await.
        self._not_before = not_before
        self._queues: dict[P, deque[T]] = {}
        self._rank: dict[P, int] = {}
        self._backlog: dict[P, int | None] = {}
        self._empty_since: dict[P, int] = {}

    def assign(self, partitions: Iterable[P], now_ms: int) -> None:
        """Start tracking partitions (ranked by their sort order, for tie-breaks)."""
        for p in partitions:
            if p not in self._queues:
                self._queues[p] = deque()
                self._backlog[p] = None
                self._empty_since[p] = now_ms
        for rank, p in enumerate(sorted(self._queues, key=repr)):
            self._rank[p] = rank

    def revoke(self, partitions: Iterable[P]) -> None:
        """Forget partitions and drop what was buffered for them (it was not applied)."""
        for p in partitions:
            for table in (self._queues, self._rank, self._backlog, self._empty_since):
                table.pop(p, None)

    def push(self, partition: P, records: Sequence[T]) -> None:
        """Buffer records of an assigned partition, in offset order."""
        queue = self._queues.get(partition)
        if queue is not None:
            queue.extend(records)

    def note_position(self, partition: P, backlog: int | None, now_ms: int) -> None:
        """Record how many records the broker holds beyond what was fetched (None: unknown)."""
        if partition in self._backlog:
            if not self._queues[partition] and backlog != 0 and self._backlog[partition] == 0:
                self._empty_since[partition] = now_ms
            self._backlog[partition] = backlog

    def _blocking(self, partition: P, now_ms: int) -> bool:
        if self._queues[partition]:
            return False
        backlog = self._backlog[partition]
        if backlog == 0:
            return False  # caught up: nothing older can be waiting at the broker
        if backlog is not None:
            # Records exist at the broker that this partition has not handed over yet: the
            # next fetch brings them, and releasing the others first would apply a later event
            # before an earlier one. Always wait: this is what makes a replay or a backlog
            # exact whatever the settings (Tansu's high watermark may run a fetch ahead, which
            # costs one more fetch, a few ms, live).
            return True
        # Never fetched (just assigned, or its fetch failed): wait at most max_wait_ms, so a
        # partition whose broker does not answer cannot hold every other one forever.
        return now_ms - self._empty_since[partition] < self._max_wait_ms

    def pop_ready(self, now_ms: int, limit: int) -> list[tuple[P, T]]:
        """Release up to `limit` records in merge order; stop where a partition must be awaited."""
        if any(self._blocking(p, now_ms) for p in self._queues):
            return []
        heap = [(self._key(q[0]), self._rank[p], p) for p, q in self._queues.items() if q]
        heapq.heapify(heap)
        out: list[tuple[P, T]] = []
        not_before = self._not_before
        while heap and len(out) < limit:
            if not_before is not None and not_before(self._queues[heap[0][2]][0]) > now_ms:
                break
            _, rank, p = heapq.heappop(heap)
            queue = self._queues[p]
            out.append((p, queue.popleft()))
            if queue:
                heapq.heappush(heap, (self._key(queue[0]), rank, p))
            else:
                self._empty_since[p] = now_ms
                if self._blocking(p, now_ms):
                    break
        return out

    def first_offset(self, partition: P) -> int | None:
        """Offset of the first record buffered for `partition` (None when it holds none)."""
        queue = self._queues.get(partition)
        return self._offset(queue[0]) if queue else None

    def flow(self, paused: set[P], high: int) -> tuple[list[P], list[P]]:
        """Partitions to pause (holding `high` records or more) and to resume (down to half).

        Fetches run ahead unevenly (a broker may hand over megabytes of one partition), and a
        merge holds every partition that is ahead in event time until the others catch up: a
        replay buffered a quarter of a million records this way. A paused partition always
        has records buffered when it is paused and when it is resumed, so the merge never
        waits on one.
        """
        pause = [p for p, q in self._queues.items() if len(q) >= high and p not in paused]
        resume = [p for p in paused if p in self._queues and len(self._queues[p]) <= high // 2]
        return pause, resume

    def buffered(self, partition: P | None = None) -> int:
        """Records held, for one partition or all."""
        if partition is not None:
            return len(self._queues.get(partition, ()))
        return sum(len(q) for q in self._queues.values())

    def caught_up(self) -> bool:
        """True when nothing is buffered and every partition is at its high watermark."""
        return all(b == 0 for b in self._backlog.values()) and not any(self._queues.values())
