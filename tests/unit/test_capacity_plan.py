"""benchmarks.capacity.plan: CPU per event x rate / core budget, against a brute-force count."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.capacity import GROUPS_PER_PRIMARY, plan


def smallest_count(load_cores: float, budget: float) -> int:
    """The fewest processes of `budget` cores each that carry `load_cores` (at least one)."""
    count = 1
    while count * budget < load_cores - 1e-9:
        count += 1
    return count


@given(
    rate=st.integers(1, 2_000_000),
    worker_us=st.floats(1, 500),
    redis_us=st.floats(1, 200),
    skew=st.floats(1, 2),
)
def test_a_plan_carries_the_rate_with_the_fewest_processes_and_partitions_to_grow(
    rate: int, worker_us: float, redis_us: float, skew: float
) -> None:
    p = plan(rate, worker_us, redis_us, skew, worker_budget=0.7, redis_budget=0.5)
    assert p.worker_cores == rate * worker_us / 1e6
    assert p.workers == smallest_count(rate * worker_us / 1e6, 0.7)
    # The busiest primary carries skew x the mean share, and must stay within its budget.
    assert p.primaries == smallest_count(rate * redis_us / 1e6 * skew, 0.5)
    assert p.partitions >= 2 * p.workers and p.partitions % 12 == 0
    assert p.partitions - 12 < 2 * p.workers  # no bigger than it needs to be
    assert p.key_groups == GROUPS_PER_PRIMARY * p.primaries


def test_the_worked_example_of_the_readme() -> None:
    # 100,000 events/s at 40 us of worker CPU and 20 us of Redis CPU an event: 4 worker cores
    # at 70% -> 6 workers; 2 Redis cores at 50% -> 4 primaries; 12 partitions; 64 groups.
    p = plan(100_000, 40.0, 20.0)
    assert (p.workers, p.primaries, p.partitions, p.key_groups) == (6, 4, 12, 64)
