"""metrics.observe_since: one pass per bucket, the same histogram as an observe() per event."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from streamscore.metrics import LATENCY_BUCKETS_S, observe_since

DONE_MS = 1_790_000_000_000


def _histogram() -> Histogram:
    return Histogram("t_seconds", "test", buckets=LATENCY_BUCKETS_S, registry=CollectorRegistry())


def _samples(h: Histogram) -> dict[str, float]:
    return {
        f"{s.name}{s.labels.get('le', '')}": s.value
        for metric in h.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.integers(-2000, 0).map(lambda d: DONE_MS - d)  # starts after done: latency 0
        | st.sampled_from([round(b * 1000) + d for b in LATENCY_BUCKETS_S for d in (-1, 0, 1)]).map(
            lambda ms: DONE_MS - ms
        )  # right at, below and above every bound
        | st.integers(0, 120_000).map(lambda ms: DONE_MS - ms),
        max_size=200,
    )
)
def test_observe_since_is_observe_per_event(starts: list[int]) -> None:
    bulk, one_by_one = _histogram(), _histogram()
    observe_since(bulk, DONE_MS, starts)
    for t in starts:
        one_by_one.observe(max(DONE_MS - t, 0) / 1000.0)
    got, want = _samples(bulk), _samples(one_by_one)
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert math.isclose(got[name], value, rel_tol=1e-9, abs_tol=1e-9), name
