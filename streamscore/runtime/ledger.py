"""The offset ledger: the one owner of "commit only what was applied or durably dead-lettered".

A record fetched from Kafka is, until its effect is safe, in one of three places: buffered in
the aligner, in a batch being decided or applied in Redis, or in a dead letter being sent. The
offset committed for a partition must never pass the first such record, whatever happens to
it: a batch whose Redis call failed keeps holding its partitions until it is applied or the
process ends, so a restart redelivers it. The ledger holds the fetch positions and the holds
(one per batch or dead-letter send); the aligner's buffer is passed in when offsets are asked
for, since the aligner owns it. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


class Hold(Generic[P]):
    """Records in flight: the lowest offset per partition of a batch or a dead-letter send."""

    __slots__ = ("firsts",)

    def __init__(self, firsts: Mapping[P, int]) -> None:
        self.firsts = dict(firsts)


class OffsetLedger(Generic[P]):
    """Fetch positions and in-flight holds per partition; computes the committable offsets."""

    def __init__(self) -> None:
        self._next: dict[P, int] = {}
        self._holds: list[Hold[P]] = []
        self._committed: dict[P, int] = {}

    def fetched(self, partition: P, next_offset: int) -> None:
        """Every record of `partition` below `next_offset` has been handed to the intake."""
        self._next[partition] = next_offset

    def hold(self, firsts: Mapping[P, int]) -> Hold[P]:
        """Start holding commits at `firsts` until release(); returns the hold."""
        hold = Hold(firsts)
        self._holds.append(hold)
        return hold

    def release(self, hold: Hold[P]) -> None:
        """The held records' effects are safe (applied, or dead-lettered and acknowledged)."""
        self._holds.remove(hold)

    @property
    def in_flight(self) -> int:
        """Holds not yet released."""
        return len(self._holds)

    def forget(self, partitions: Iterable[P]) -> None:
        """Drop a revoked partition: its position, last commit and its part of every hold."""
        for p in partitions:
            self._next.pop(p, None)
            self._committed.pop(p, None)
            for hold in self._holds:
                hold.firsts.pop(p, None)

    def rewind(self, positions: Mapping[P, int]) -> None:
        """After seeking back: fetches resume at `positions`; every hold is void."""
        self._holds.clear()
        self._next.update(positions)

    def committable(self, partition: P, buffered_first: int | None) -> int | None:
        """The highest offset safe to commit (None: nothing fetched yet)."""
        offset = self._next.get(partition)
        if offset is None:
            return None
        if buffered_first is not None and buffered_first < offset:
            offset = buffered_first
        for hold in self._holds:
            first = hold.firsts.get(partition)
            if first is not None and first < offset:
                offset = first
        return offset

    def to_commit(
        self, partitions: Iterable[P], buffered_first: Callable[[P], int | None]
    ) -> dict[P, int]:
        """Offsets that moved forward since the last commit, ready for consumer.commit()."""
        out = {}
        for p in partitions:
            offset = self.committable(p, buffered_first(p))
            if offset is not None and offset > self._committed.get(p, -1):
                out[p] = offset
        return out

    def committed(self, offsets: Mapping[P, int]) -> None:
        """The broker accepted these offsets."""
        for p, offset in offsets.items():
            if offset > self._committed.get(p, -1):
                self._committed[p] = offset
