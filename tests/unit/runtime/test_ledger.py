"""The offset ledger commits exactly up to the first record whose effect is not yet safe."""

from __future__ import annotations

from collections import deque

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamscore.runtime.ledger import Hold, OffsetLedger

PARTITIONS = ("a", "b", "c")


def test_a_failed_batch_holds_its_partition_until_released() -> None:
    ledger: OffsetLedger[str] = OffsetLedger()
    ledger.fetched("a", 10)
    batch = ledger.hold({"a": 4})
    assert ledger.to_commit(["a"], lambda p: None) == {"a": 4}
    ledger.committed({"a": 4})
    ledger.fetched("a", 20)
    # The batch at 4 failed and was never released: later fetches do not move the commit.
    assert ledger.to_commit(["a"], lambda p: None) == {}
    ledger.release(batch)
    assert ledger.to_commit(["a"], lambda p: 15) == {"a": 15}


def test_nothing_is_committed_for_a_partition_never_fetched() -> None:
    ledger: OffsetLedger[str] = OffsetLedger()
    ledger.hold({"a": 3})
    assert ledger.to_commit(["a", "b"], lambda p: None) == {}


def test_forget_drops_a_revoked_partition_from_every_hold() -> None:
    ledger: OffsetLedger[str] = OffsetLedger()
    ledger.fetched("a", 10)
    ledger.fetched("b", 10)
    ledger.hold({"a": 2, "b": 3})
    ledger.forget(["a"])
    assert ledger.to_commit(["a", "b"], lambda p: None) == {"b": 3}


class LedgerAgainstRecords(RuleBasedStateMachine):
    """Brute force: every fetched record carries its own status; the ledger must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger: OffsetLedger[str] = OffsetLedger()
        self.next: dict[str, int] = {}
        self.buffered: dict[str, deque[int]] = {p: deque() for p in PARTITIONS}
        self.pending: dict[tuple[str, int], bool] = {}  # record -> not yet safe
        self.holds: list[tuple[Hold[str], list[tuple[str, int]]]] = []
        self.last_commit: dict[str, int] = {}

    @rule(p=st.sampled_from(PARTITIONS), n=st.integers(1, 6), rejected=st.integers(0, 63))
    def fetch(self, p: str, n: int, rejected: int) -> None:
        start = self.next.get(p, 0)
        offsets = list(range(start, start + n))
        bad = [o for i, o in enumerate(offsets) if rejected >> i & 1]
        for o in offsets:
            self.pending[(p, o)] = True
            if o not in bad:
                self.buffered[p].append(o)
        self.next[p] = start + n
        self.ledger.fetched(p, start + n)
        if bad:  # invalid records go straight to a dead-letter send
            records = [(p, o) for o in bad]
            self.holds.append((self.ledger.hold({p: bad[0]}), records))

    @rule(take=st.lists(st.sampled_from(PARTITIONS), min_size=1, max_size=8))
    def release_batch(self, take: list[str]) -> None:
        records = [(p, self.buffered[p].popleft()) for p in take if self.buffered[p]]
        if not records:
            return
        firsts: dict[str, int] = {}
        for p, o in records:
            firsts.setdefault(p, o)
        self.holds.append((self.ledger.hold(firsts), records))

    @precondition(lambda self: bool(self.holds))
    @rule(i=st.integers(0, 100))
    def finish(self, i: int) -> None:
        hold, records = self.holds.pop(i % len(self.holds))
        self.ledger.release(hold)
        for record in records:
            self.pending[record] = False

    @rule()
    def commit(self) -> None:
        offsets = self.ledger.to_commit(PARTITIONS, self._buffered_first)
        for p, offset in offsets.items():
            assert offset > self.last_commit.get(p, -1)
        self.ledger.committed(offsets)
        self.last_commit.update(offsets)

    def _buffered_first(self, p: str) -> int | None:
        return self.buffered[p][0] if self.buffered[p] else None

    @invariant()
    def committable_is_the_first_unsafe_record(self) -> None:
        for p in PARTITIONS:
            unsafe = [o for (q, o), open_ in self.pending.items() if q == p and open_]
            expected = min(unsafe) if unsafe else self.next.get(p)
            assert self.ledger.committable(p, self._buffered_first(p)) == expected

    @invariant()
    def no_commit_passes_an_unsafe_record(self) -> None:
        for (p, o), open_ in self.pending.items():
            if open_:
                assert self.last_commit.get(p, -1) <= o


TestLedgerAgainstRecords = LedgerAgainstRecords.TestCase
TestLedgerAgainstRecords.settings = settings(max_examples=300, stateful_step_count=40)
