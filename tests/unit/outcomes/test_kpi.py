"""KPI arithmetic: field names, bands, Wilson intervals, percentiles, deciles and gains."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamscore.outcomes.kpi import (
    LOSS_REASONS,
    REJECTION_REASONS,
    TIME_BUCKETS_S,
    add_counters,
    band_label,
    band_text,
    compute_kpis,
    distribution,
    field,
    parse_band,
    percentile,
    reason_label,
    time_bucket,
    wilson,
)


def test_field_and_band_labels() -> None:
    assert field("live", "b2b-1.2", "stage", "hot", "won") == "live|b2b-1.2|stage|hot|won"
    edges = (70.0, 72.0, 74.0)
    assert band_label(69.9, edges, True) == "f-inf~70"
    assert band_label(70.0, edges, True) == "f70~72"  # [lo, hi)
    assert band_label(74.0, edges, False) == "b74~inf"
    assert parse_band("f70~72") == (True, 70.0, 72.0)
    assert parse_band("b74~inf") == (False, 74.0, math.inf)
    assert band_text(70, 72) == "70-72"
    assert band_text(-math.inf, 70) == "below 70"
    assert band_text(74, math.inf) == "74 and above"


def test_time_buckets() -> None:
    assert time_bucket(-5) == "0"  # before the handoff
    assert time_bucket(0) == "0"
    assert time_bucket(1) == "300"
    assert time_bucket(3600) == "3600"  # upper bounds are inclusive
    assert time_bucket(3600.001) == "7200"
    assert time_bucket(TIME_BUCKETS_S[-1] + 1) == "inf"


@pytest.mark.parametrize(
    ("kind", "text", "label"),
    [
        ("rejected", None, "unspecified"),
        ("rejected", "  ", "unspecified"),
        ("rejected", "No budget", "no_budget"),
        ("rejected", "not_a_fit", "not_a_fit"),
        ("rejected", "Not a fit", "not_a_fit"),
        ("rejected", "Already a customer", "existing_customer"),
        ("rejected", "looks like SPAM", "bad_data"),
        ("rejected", "moon phase", "other"),
        ("lost", "Went with a competitor", "competitor"),
        ("lost", "Too expensive", "price"),
        ("lost", "no-decision", "no_decision"),
        ("lost", "missing features", "features"),
        ("lost", "", "unspecified"),
    ],
)
def test_reason_labels(kind: str, text: str | None, label: str) -> None:
    assert reason_label(kind, text) == label
    assert label in (REJECTION_REASONS if kind == "rejected" else LOSS_REASONS)


def test_wilson_known_values() -> None:
    # Reference values of the Wilson score interval at 95% (e.g. Newcombe 1998, table I).
    r = wilson(81, 263)
    assert r.value == pytest.approx(0.3080, abs=1e-4)
    assert r.low == pytest.approx(0.2553, abs=1e-4)
    assert r.high == pytest.approx(0.3662, abs=1e-4)
    r = wilson(0, 10)
    assert r.low == 0.0
    assert r.high == pytest.approx(0.2775, abs=1e-4)
    r = wilson(10, 10)
    assert r.low == pytest.approx(0.7225, abs=1e-4)
    assert r.high == 1.0
    with pytest.raises(ValueError, match="3 of 2"):
        wilson(3, 2)
    empty = wilson(0, 0)
    assert (empty.value, empty.low, empty.high) == (None, None, None)


@given(st.integers(0, 500), st.integers(1, 500))
def test_wilson_brackets_the_rate(k: int, n: int) -> None:
    k = min(k, n)
    r = wilson(k, n)
    assert r.low is not None and r.high is not None
    assert 0.0 <= r.low <= k / n <= r.high <= 1.0


def test_percentiles_interpolate_within_buckets() -> None:
    # 10 values in (300, 900] and 10 in (900, 1800]: the median sits at the top of the first
    buckets = [(0, 0), (300, 0), (900, 10), (1800, 10), (None, 0)]
    assert percentile(buckets, 0.5) == 900
    assert percentile(buckets, 0.25) == pytest.approx(600)
    assert percentile(buckets, 0.75) == pytest.approx(1350)
    assert percentile([(0, 4), (300, 0), (None, 0)], 0.5) == 0  # all at/before the handoff
    assert percentile([(0, 0), (300, 1), (None, 3)], 0.9) == 300  # open bucket: a lower bound
    assert percentile([(0, 0), (None, 0)], 0.5) is None
    dist = distribution({"3600": 3, "inf": 1})
    assert dist.count == 4 and dist.buckets[-1] == (None, 1)


def counters_for(rows: list[tuple[str, int, int, int]]) -> Counter[str]:
    """Counters of handoffs at tier hot: (band, handoffs, opportunities, won) per band."""
    c: Counter[str] = Counter()
    for band, n, opp, won in rows:
        c["live|v1|handoffs|hot"] += n
        c["live|v1|stage|hot|opportunity"] += opp
        c["live|v1|stage|hot|won"] += won
        c[f"live|v1|band_handoffs|{band}"] += n
        c[f"live|v1|band_stage|{band}|opportunity"] += opp
        c[f"live|v1|band_stage|{band}|won"] += won
    return c


def test_fine_bands_group_into_deciles() -> None:
    rows = [(f"f{70 + 2 * i}~{72 + 2 * i}", 10, i // 2, i // 4) for i in range(20)]  # 200
    cohort = compute_kpis(counters_for(rows)).cohorts[0]
    assert cohort.bands_are_deciles
    assert [b.handoffs for b in cohort.by_band] == [20] * 10
    assert [b.label for b in cohort.by_band][:2] == ["70-74", "74-78"]
    assert cohort.by_band[-1].high == 110
    # gains: from the top band down, the cumulative shares rise to 1
    cum = [b.cum_handoffs for b in reversed(cohort.by_band)]
    assert cum == sorted(cum) and cum[-1] == pytest.approx(1.0)
    top = cohort.by_band[-1]
    won_total = sum(r[3] for r in rows)
    assert top.cum_won == pytest.approx((4 + 4) / won_total)  # the top decile: buckets 18, 19
    assert top.lift_won == pytest.approx((8 / 20) / (won_total / 200))


def test_a_heavy_bucket_makes_fewer_than_ten_bands() -> None:
    rows = [("f90~92", 150, 30, 10), ("f92~94", 10, 5, 2), ("f94~96", 40, 20, 10)]
    cohort = compute_kpis(counters_for(rows)).cohorts[0]
    assert [b.handoffs for b in cohort.by_band] == [150, 10, 40]


def test_configured_bands_are_reported_as_they_are() -> None:
    rows = [("b-inf~80", 5, 1, 0), ("b80~100", 50, 10, 5), ("b100~inf", 5, 4, 3)]
    cohort = compute_kpis(counters_for(rows)).cohorts[0]
    assert not cohort.bands_are_deciles
    assert [b.label for b in cohort.by_band] == ["below 80", "80-100", "100 and above"]
    assert [b.won.k for b in cohort.by_band] == [0, 5, 3]
    assert cohort.lead_to_opportunity.k == 15 and cohort.lead_to_opportunity.n == 60
    assert cohort.opportunity_to_won.k == 8 and cohort.opportunity_to_won.n == 15


def test_compute_kpis_orders_tiers_and_splits_cohorts() -> None:
    c = Counter(
        {
            "live|v1|handoffs|warm": 3,
            "live|v1|handoffs|hot": 2,
            "live|v2|handoffs|hot": 4,
            "shadow|v2|handoffs|hot": 1,
            "live|v1|sla_due|hot": 2,
            "live|v1|sla_met|hot": 1,
            "live|v1|rejected_reason|no_budget": 2,
            "live|v1|rejected_reason|spam": 0,
            "*|*|unattributed|won": 2,
            "*|*|duplicates": 5,
        }
    )
    kpis = compute_kpis(c, tiers=("cold", "warm", "hot"))
    assert [(k.model, k.rules_version) for k in kpis.cohorts] == [
        ("live", "v1"),
        ("live", "v2"),
        ("shadow", "v2"),
    ]
    v1 = kpis.cohorts[0]
    assert [t.tier for t in v1.by_tier] == ["warm", "hot"]
    assert v1.total.handoffs == 5
    hot = v1.by_tier[1]
    assert (hot.sla.due, hot.sla.met, hot.sla.missed, hot.sla.pending) == (2, 1, 0, 1)
    assert v1.rejection_reasons == (("no_budget", 2),)
    assert kpis.unattributed == {"won": 2} and kpis.duplicates == 5
    assert kpis.to_json()["cohorts"][0]["total"]["handoffs"] == 5


def test_add_counters_drops_zeros() -> None:
    total = {"a": 1}
    add_counters(total, [("a", -1), ("b", 2)])
    assert total == {"b": 2}
