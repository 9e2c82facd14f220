"""Two-proportion comparison against brute force, scipy and textbook values."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from streamscore.lab.stats import (
    arm_counts,
    compare,
    compare_arms,
    fisher_exact,
    minimum_detectable_effect,
    z_test,
)
from streamscore.outcomes.kpi import compute_kpis, field


@st.composite
def two_arms(draw: st.DrawFn, max_n: int) -> tuple[int, int, int, int]:
    n1 = draw(st.integers(1, max_n))
    n2 = draw(st.integers(1, max_n))
    return draw(st.integers(0, n1)), n1, draw(st.integers(0, n2)), n2


def brute_fisher(k1: int, n1: int, k2: int, n2: int) -> Fraction:
    """Every table with the observed margins, probabilities as exact fractions."""
    total, converted = n1 + n2, k1 + k2
    denominator = math.comb(total, n1)
    probs = {
        x: Fraction(math.comb(converted, x) * math.comb(total - converted, n1 - x), denominator)
        for x in range(0, n1 + 1)
        if 0 <= converted - x <= n2
    }
    return sum((p for p in probs.values() if p <= probs[k1]), Fraction(0))


def test_fisher_tea_tasting() -> None:
    """Fisher's lady tasting tea: 3 of 4 right each way, two-sided p = 34/70."""
    assert fisher_exact(3, 4, 1, 4) == pytest.approx(34 / 70, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(two_arms(30))
def test_fisher_equals_exact_enumeration(arms: tuple[int, int, int, int]) -> None:
    assert fisher_exact(*arms) == pytest.approx(float(brute_fisher(*arms)), rel=1e-9, abs=1e-15)


@settings(max_examples=100, deadline=None)
@given(two_arms(2000))
def test_fisher_equals_scipy(arms: tuple[int, int, int, int]) -> None:
    k1, n1, k2, n2 = arms
    expected = scipy_stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue
    assert fisher_exact(*arms) == pytest.approx(expected, rel=1e-6, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(two_arms(5000))
def test_z_test_is_the_uncorrected_chi_square(arms: tuple[int, int, int, int]) -> None:
    k1, n1, k2, n2 = arms
    z, p = z_test(*arms)
    if k1 + k2 in (0, n1 + n2):
        assert (z, p) == (None, 1.0)
        return
    assert z is not None
    chi2, expected_p, _, _ = scipy_stats.chi2_contingency(
        [[k1, n1 - k1], [k2, n2 - k2]], correction=False
    )
    assert z * z == pytest.approx(chi2, rel=1e-9, abs=1e-12)
    assert p == pytest.approx(expected_p, rel=1e-7, abs=1e-14)
    assert math.copysign(1, z) == math.copysign(1, k2 / n2 - k1 / n1) or z == 0


def test_z_test_textbook() -> None:
    """100 of 1000 vs 130 of 1000: pooled 0.115, z = 0.03 / sqrt(0.115 * 0.885 * 0.002)."""
    z, p = z_test(100, 1000, 130, 1000)
    assert z == pytest.approx(0.03 / math.sqrt(0.115 * 0.885 * 0.002), rel=1e-12)
    assert z == pytest.approx(2.1027, abs=1e-4)
    assert p == pytest.approx(0.0355, abs=1e-4)


def exact_power(n: int, p1: float, p2: float, alpha: float) -> float:
    """Probability that the z-test rejects, summed over every outcome of two binomials."""
    pmf1 = [math.comb(n, k) * p1**k * (1 - p1) ** (n - k) for k in range(n + 1)]
    pmf2 = [math.comb(n, k) * p2**k * (1 - p2) ** (n - k) for k in range(n + 1)]
    return sum(
        a * b
        for k1, a in enumerate(pmf1)
        if a > 1e-12
        for k2, b in enumerate(pmf2)
        if b > 1e-12 and z_test(k1, n, k2, n)[1] < alpha
    )


@pytest.mark.parametrize(("n", "rate"), [(300, 0.2), (400, 0.5), (500, 0.1)])
def test_minimum_detectable_effect_has_the_stated_power(n: int, rate: float) -> None:
    """A true difference of the MDE (centred on the rate) is found about 80% of the time."""
    mde = minimum_detectable_effect(n, n, rate)
    assert mde is not None
    power = exact_power(n, rate - mde / 2, rate + mde / 2, 0.05)
    assert power == pytest.approx(0.80, abs=0.03)
    smaller = minimum_detectable_effect(4 * n, 4 * n, rate)
    assert smaller is not None
    assert smaller == pytest.approx(mde / 2, rel=1e-12)  # 4x the leads, half the effect


def test_minimum_detectable_effect_needs_data() -> None:
    assert minimum_detectable_effect(0, 10, 0.2) is None
    assert minimum_detectable_effect(10, 10, 0.0) is None


@settings(max_examples=150, deadline=None)
@given(two_arms(400))
def test_verdict_follows_the_deciding_test(arms: tuple[int, int, int, int]) -> None:
    k1, n1, k2, n2 = arms
    c = compare(("live", k1, n1), ("candidate", k2, n2))
    pooled = (k1 + k2) / (n1 + n2)
    small = min(n1, n2) * min(pooled, 1 - pooled) < 5
    assert c.test == ("fisher" if small else "z")
    assert c.p_value == (c.p_value_fisher if small else c.p_value_z)
    assert c.significant == (c.p_value < 0.05)
    assert ("not significant at 5%" in c.statement()) != c.significant
    assert c.difference == pytest.approx(k2 / n2 - k1 / n1)
    assert c.control_rate.k == k1
    assert c.treatment_rate.n == n2


def test_statement_reads_plainly() -> None:
    c = compare(("live", 100, 1000), ("candidate", 130, 1000))
    assert c.statement() == (
        "candidate converts 13.0% (130 of 1000) vs 10.0% (100 of 1000) for live (+3.0 points): "
        "significant at 5% (two-proportion z-test, p = 0.0355); with these counts a difference "
        "of 4.0 points is detectable with 80% power"
    )
    empty = compare(("live", 0, 0), ("candidate", 3, 10))
    assert not empty.significant
    assert "nothing to test" in empty.statement()


def test_several_arms_are_judged_at_a_bonferroni_level() -> None:
    counts = {"live": (100, 1000), "b": (130, 1000), "c": (95, 1000)}
    found = compare_arms(counts, "live")
    assert [c.treatment for c in found] == ["b", "c"]
    assert all(c.alpha == 0.025 for c in found)
    # p = 0.0355 would pass at 5% alone, but not at 2.5% among two comparisons.
    assert found[0].p_value == pytest.approx(0.0355, abs=1e-4)
    assert not found[0].significant
    assert "at 2.5%" in found[0].statement()
    with pytest.raises(ValueError, match="no counts"):
        compare_arms(counts, "missing")


def test_arm_counts_sum_each_models_rules_versions() -> None:
    counters = {
        field("live", "v1", "handoffs", "hot"): 600,
        field("live", "v1", "stage", "hot", "opportunity"): 60,
        field("live", "v0", "handoffs", "warm"): 400,
        field("live", "v0", "stage", "warm", "opportunity"): 40,
        field("live", "v0", "stage", "warm", "won"): 10,
        field("candidate", "v2", "handoffs", "hot"): 1000,
        field("candidate", "v2", "stage", "hot", "opportunity"): 130,
        field("candidate", "v2", "stage", "hot", "won"): 30,
    }
    kpis = compute_kpis(counters, ("cold", "warm", "hot"))
    assert arm_counts(kpis, "opportunity") == {"live": (100, 1000), "candidate": (130, 1000)}
    assert arm_counts(kpis, "won") == {"live": (10, 1000), "candidate": (30, 1000)}
    (found,) = compare_arms(arm_counts(kpis, "opportunity"), "live")
    assert found.p_value == pytest.approx(z_test(100, 1000, 130, 1000)[1])
