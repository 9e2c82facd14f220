"""Two arms' conversion compared: Wilson intervals, a two-proportion z-test or Fisher's exact
test, a plain verdict at a significance level, and the minimum detectable effect for the counts.

Pure and stdlib-only: the normal distribution is statistics.NormalDist, Fisher's test sums the
hypergeometric probabilities (from log-gamma) of every table with the same margins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final, Literal

from streamscore.outcomes.kpi import Kpis, Rate, wilson

ALPHA: Final = 0.05
POWER: Final = 0.80
#: Cochran's rule: below this expected count in any cell, the z-test's normal approximation is
#: poor and Fisher's exact test decides.
MIN_EXPECTED: Final = 5.0
#: Tables whose probability is within this relative distance of the observed one count as "as
#: extreme" in Fisher's two-sided test (R's fisher.test uses the same), so that float noise in
#: equal probabilities does not drop a table.
_FISHER_REL_TOL: Final = 1e-7
_STD_NORMAL: Final = NormalDist()


@dataclass(frozen=True, slots=True)
class Comparison:
    """One arm against the control: rates, difference, test, verdict and what it could detect."""

    control: str
    treatment: str
    control_rate: Rate
    treatment_rate: Rate
    difference: float | None  # treatment - control, in rate units (0.02 = 2 points)
    z: float | None  # None when every lead converted, or none did
    p_value_z: float
    p_value_fisher: float
    test: Literal["z", "fisher"]  # the test whose p-value decides
    p_value: float
    alpha: float  # the level each comparison is judged at (Bonferroni when several)
    significant: bool
    mde: float | None  # smallest difference detectable at `alpha` with `power`; None: no data
    power: float

    def statement(self) -> str:
        """The verdict in one sentence, e.g. '... significant at 5% (z-test, p = 0.012) ...'."""
        c, t = self.control_rate, self.treatment_rate
        if c.value is None or t.value is None or self.difference is None:
            return f"{self.treatment} vs {self.control}: no leads in an arm yet, nothing to test"
        verdict = "significant" if self.significant else "not significant"
        test = "two-proportion z-test" if self.test == "z" else "Fisher's exact test"
        text = (
            f"{self.treatment} converts {100 * t.value:.1f}% ({t.k} of {t.n}) vs "
            f"{100 * c.value:.1f}% ({c.k} of {c.n}) for {self.control} "
            f"({100 * self.difference:+.1f} points): {verdict} at {_percent(self.alpha)} "
            f"({test}, p = {self.p_value:.3g})"
        )
        if self.mde is not None:
            text += (
                f"; with these counts a difference of {100 * self.mde:.1f} points is detectable "
                f"with {100 * self.power:.0f}% power"
            )
        return text


def _percent(alpha: float) -> str:
    return f"{100 * alpha:.3g}%"


def z_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float | None, float]:
    """Pooled two-proportion z-test of k2/n2 against k1/n1: (z, two-sided p-value).

    z is None (and p 1) when the pooled rate is 0 or 1: the arms cannot differ.
    """
    _check(k1, n1)
    _check(k2, n2)
    if n1 == 0 or n2 == 0:
        return None, 1.0
    pooled = (k1 + k2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return None, 1.0
    z = (k2 / n2 - k1 / n1) / math.sqrt(variance)
    return z, min(1.0, 2 * _STD_NORMAL.cdf(-abs(z)))


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Fisher's exact test, two-sided: the probability, given the margins, of a table at most as
    likely as the observed one (the 2x2 table [[k1, n1 - k1], [k2, n2 - k2]])."""
    _check(k1, n1)
    _check(k2, n2)
    total, converted = n1 + n2, k1 + k2
    low, high = max(0, n1 - (total - converted)), min(n1, converted)
    if low == high:
        return 1.0
    log_norm = _log_comb(total, n1)

    def log_pmf(x: int) -> float:
        return _log_comb(converted, x) + _log_comb(total - converted, n1 - x) - log_norm

    observed = log_pmf(k1)
    bound = observed + math.log1p(_FISHER_REL_TOL)
    p = math.fsum(math.exp(lp) for x in range(low, high + 1) if (lp := log_pmf(x)) <= bound)
    return min(1.0, p)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _check(k: int, n: int) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"{k} conversions of {n} leads: the counts are inconsistent")


def minimum_detectable_effect(
    n1: int, n2: int, rate: float, alpha: float = ALPHA, power: float = POWER
) -> float | None:
    """The smallest difference of rates a two-sided test at `alpha` detects with `power`, for
    arms of n1 and n2 leads around `rate` (normal approximation); None without leads or when
    `rate` is 0 or 1 (no variance to size it on)."""
    if n1 <= 0 or n2 <= 0 or not 0 < rate < 1:
        return None
    z_alpha = _STD_NORMAL.inv_cdf(1 - alpha / 2)
    z_power = _STD_NORMAL.inv_cdf(power)
    return (z_alpha + z_power) * math.sqrt(rate * (1 - rate) * (1 / n1 + 1 / n2))


def compare(
    control: tuple[str, int, int],
    treatment: tuple[str, int, int],
    alpha: float = ALPHA,
    power: float = POWER,
) -> Comparison:
    """Compare (name, conversions, leads) of a treatment arm against the control arm."""
    name1, k1, n1 = control
    name2, k2, n2 = treatment
    z, p_z = z_test(k1, n1, k2, n2)
    p_fisher = fisher_exact(k1, n1, k2, n2)
    total = n1 + n2
    pooled = (k1 + k2) / total if total else 0.0
    expected = [n * pooled for n in (n1, n2)] + [n * (1 - pooled) for n in (n1, n2)]
    test: Literal["z", "fisher"] = "fisher" if z is None or min(expected) < MIN_EXPECTED else "z"
    p = p_fisher if test == "fisher" else p_z
    r1, r2 = wilson(k1, n1), wilson(k2, n2)
    return Comparison(
        control=name1,
        treatment=name2,
        control_rate=r1,
        treatment_rate=r2,
        difference=None if r1.value is None or r2.value is None else r2.value - r1.value,
        z=z,
        p_value_z=p_z,
        p_value_fisher=p_fisher,
        test=test,
        p_value=p,
        alpha=alpha,
        significant=n1 > 0 and n2 > 0 and p < alpha,
        mde=minimum_detectable_effect(n1, n2, pooled, alpha, power),
        power=power,
    )


def compare_arms(
    counts: Mapping[str, tuple[int, int]],
    control: str,
    alpha: float = ALPHA,
    power: float = POWER,
) -> list[Comparison]:
    """Every other arm against `control`, from arm -> (conversions, leads); with more than one
    comparison each is judged at alpha / comparisons (Bonferroni), so the family stays at alpha."""
    if control not in counts:
        raise ValueError(f"control arm {control!r} has no counts")
    others = sorted(arm for arm in counts if arm != control)
    level = alpha / max(1, len(others))
    k1, n1 = counts[control]
    return [compare((control, k1, n1), (arm, *counts[arm]), level, power) for arm in others]


def ab_statements(kpis: Kpis, control: str | None = None) -> list[str]:
    """The A/B verdicts a report prints: each arm against the control, for opportunity and won
    per handoff; none when the counters hold one model only. The control defaults to `live`
    when it is an arm, else the first arm by name."""
    models = sorted({cohort.model for cohort in kpis.cohorts})
    if len(models) < 2:
        return []
    chosen = control or ("live" if "live" in models else models[0])
    if chosen not in models:
        raise ValueError(f"control arm {chosen!r} is not among the models {', '.join(models)}")
    lines = []
    for stage in ("opportunity", "won"):
        for comparison in compare_arms(arm_counts(kpis, stage), chosen):
            lines.append(f"{stage} per handoff: {comparison.statement()}")
    return lines


def arm_counts(kpis: Kpis, stage: Literal["opportunity", "won"]) -> dict[str, tuple[int, int]]:
    """Per model (arm): (handoffs that reached `stage`, handoffs), over its rules versions.

    This is conversion per handoff, what the KPI counters hold. When arms hand off different
    shares of their leads, compare conversion per lead assigned instead: pass compare_arms
    (converted, leads in the arm) from the assignment counts.
    """
    counts: dict[str, tuple[int, int]] = {}
    for cohort in kpis.cohorts:
        rate = cohort.total.opportunity if stage == "opportunity" else cohort.total.won
        k, n = counts.get(cohort.model, (0, 0))
        counts[cohort.model] = (k + rate.k, n + rate.n)
    return counts
