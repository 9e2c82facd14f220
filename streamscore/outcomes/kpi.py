"""KPI counters (flat, additive integers) and the KPIs computed from them.

Every KPI is a ratio or a distribution of additive integer counters, so the engine can add each
lead's counter deltas to a Redis hash (HINCRBY) in its atomic commit, and readers can sum the key
groups' hashes in any order. This module names every counter field (`field`), keeps every label
in a small closed set, and turns summed counters into typed KPIs (`compute_kpis`).

A field is `model|rules_version|metric|label...`; labels by metric:

==================  =====================  ===============================================
metric              labels                 counts
==================  =====================  ===============================================
handoffs            tier                   handoffs, by tier at handoff
stage               tier, stage            handoffs whose lead reached the stage (STAGES)
band_handoffs       band                   handoffs, by score band at handoff
band_stage          band, stage            as `stage`, by band
rejected_reason     reason                 handoffs finally rejected, by REJECTION_REASONS
lost_reason         reason                 handoffs finally lost, by LOSS_REASONS
sales_first         tier                   handoffs with a sales outcome earlier than them
sla_due             tier                   handoffs with a first-touch deadline
sla_met             tier                   ... touched by the deadline
sla_missed          tier                   ... whose deadline passed untouched (settled)
sla_breaches        tier                   SLA-breach events emitted (one per handoff at most)
t_touch             tier, bucket           time from handoff to first touch (TIME_BUCKETS_S)
t_opportunity       tier, bucket           time from handoff to opportunity
t_close             tier, bucket           time from handoff to the final won/lost
unattributed        outcome type           outcomes with no handoff to count toward (model *)
duplicates          -                      outcomes seen again by id (model *)
overflow            -                      outcomes or handoffs past a lead's caps (model *)
==================  =====================  ===============================================

Score bands: a band label is `f<lo>~<hi>` (the default fine buckets, which `compute_kpis` groups
into deciles of the handoffs: adjacent buckets holding about a tenth of them each) or `b<lo>~<hi>`
(edges set by the rules' `outcomes.score_bands`, reported as they are). Deciles proper need the
whole score distribution, which fixed counters cannot hold; fine fixed buckets can, to 2 points.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

SEP: Final = "|"
ALL: Final = "*"  # the model and rules version of counters that belong to no handoff
DEFAULT_MODEL: Final = "live"
MODEL_NAME: Final = r"^[a-z][a-z0-9_-]{0,31}$"

STAGES: Final = ("accepted", "rejected", "touched", "opportunity", "won", "lost")
REJECTION_REASONS: Final = (
    "not_a_fit",
    "no_budget",
    "no_authority",
    "no_need",
    "bad_timing",
    "unreachable",
    "competitor",
    "existing_customer",
    "duplicate",
    "bad_data",
    "unspecified",
    "other",
)
LOSS_REASONS: Final = (
    "price",
    "competitor",
    "no_decision",
    "no_budget",
    "timing",
    "features",
    "unresponsive",
    "unspecified",
    "other",
)
#: Upper bounds (seconds, inclusive) of the time-to-X histogram buckets; one more bucket holds
#: everything above the last. The first (0) holds outcomes at or before the handoff.
TIME_BUCKETS_S: Final = (
    0, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 345600, 604800, 1209600,
    2592000, 5184000, 7776000, 15552000,
)  # fmt: skip
OVER: Final = "inf"
TIME_METRICS: Final = ("t_touch", "t_opportunity", "t_close")
Z_95: Final = 1.959963984540054
DECILES: Final = 10

# Words in a free-text reason -> its label, first match wins (after an exact label match).
_REJECTION_WORDS: Final = (
    ("competitor", "competitor"),
    ("customer", "existing_customer"),
    ("duplicate", "duplicate"),
    ("budget", "no_budget"),
    ("authority", "no_authority"),
    ("decision maker", "no_authority"),
    ("timing", "bad_timing"),
    ("timeline", "bad_timing"),
    ("not now", "bad_timing"),
    ("later", "bad_timing"),
    ("unreachable", "unreachable"),
    ("no response", "unreachable"),
    ("no answer", "unreachable"),
    ("fit", "not_a_fit"),
    ("need", "no_need"),
    ("interest", "no_need"),
    ("spam", "bad_data"),
    ("fake", "bad_data"),
    ("invalid", "bad_data"),
    ("data", "bad_data"),
)
_LOSS_WORDS: Final = (
    ("competitor", "competitor"),
    ("price", "price"),
    ("pricing", "price"),
    ("expensive", "price"),
    ("cost", "price"),
    ("budget", "no_budget"),
    ("no decision", "no_decision"),
    ("status quo", "no_decision"),
    ("timing", "timing"),
    ("later", "timing"),
    ("feature", "features"),
    ("functionality", "features"),
    ("unresponsive", "unresponsive"),
    ("no response", "unresponsive"),
    ("ghost", "unresponsive"),
)
_NOT_WORD = re.compile(r"[^a-z0-9]+")


# ---------------------------------------------------------------- field names


def field(model: str, rules_version: str, metric: str, *labels: str) -> str:
    """The counter field of a metric; the one place fields are built."""
    return SEP.join((model, rules_version, metric, *labels))


def global_field(metric: str, *labels: str) -> str:
    """A counter that belongs to no handoff (unattributed, duplicates, overflow)."""
    return field(ALL, ALL, metric, *labels)


def _num(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, ".12g")


def band_label(score: float, edges: Sequence[float], fine: bool) -> str:
    """The label of the band holding `score`: [lo, hi) with open ends below and above."""
    i = bisect.bisect_right(edges, score)
    lo = edges[i - 1] if i > 0 else -math.inf
    hi = edges[i] if i < len(edges) else math.inf
    return f"{'f' if fine else 'b'}{_num(lo)}~{_num(hi)}"


def band_text(lo: float, hi: float) -> str:
    """A band as people read it: "70-90", "below 70", "220 and above"."""
    if math.isinf(lo) and math.isinf(hi):
        return "any score"
    if math.isinf(lo):
        return f"below {_num(hi)}"
    if math.isinf(hi):
        return f"{_num(lo)} and above"
    return f"{_num(lo)}-{_num(hi)}"


def parse_band(label: str) -> tuple[bool, float, float]:
    """(fine, lo, hi) of a band label."""
    lo, hi = label[1:].split("~")
    return label[0] == "f", float(lo), float(hi)


def time_bucket(seconds: float) -> str:
    """The histogram bucket label of a duration (negative: the outcome was before the handoff)."""
    i = bisect.bisect_left(TIME_BUCKETS_S, seconds)
    return str(TIME_BUCKETS_S[i]) if i < len(TIME_BUCKETS_S) else OVER


def reason_label(kind: str, text: str | None) -> str:
    """A free-text rejection (`kind` "rejected") or loss ("lost") reason as a closed-set label."""
    labels, words = (
        (REJECTION_REASONS, _REJECTION_WORDS) if kind == "rejected" else (LOSS_REASONS, _LOSS_WORDS)
    )
    if text is None or not text.strip():
        return "unspecified"
    spaced = " ".join(_NOT_WORD.split(text.lower())).strip()
    exact = spaced.replace(" ", "_")
    if exact in labels:
        return exact
    for word, label in words:
        if word in spaced:
            return label
    return "other"


# ---------------------------------------------------------------- the KPI values


@dataclass(frozen=True, slots=True)
class Rate:
    """k of n, with its Wilson 95% confidence interval (None when n is 0)."""

    k: int
    n: int
    value: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class Distribution:
    """A duration histogram: (upper bound s or None for the open last bucket, count) per bucket,
    and percentiles interpolated within buckets (a percentile in the open bucket is reported as
    the last finite bound, a lower bound)."""

    count: int
    buckets: tuple[tuple[int | None, int], ...]
    p50_s: float | None
    p75_s: float | None
    p90_s: float | None


@dataclass(frozen=True, slots=True)
class Sla:
    """First-touch SLA: due = met + missed + pending (deadline not passed, no touch yet)."""

    due: int
    met: int
    missed: int
    pending: int
    breaches: int
    attainment: Rate  # met / (met + missed): settled handoffs only


@dataclass(frozen=True, slots=True)
class TierKpis:
    """The funnel of the handoffs at one tier (or all tiers: tier "all")."""

    tier: str
    handoffs: int
    accepted: Rate
    rejected: Rate
    touched: Rate
    opportunity: Rate
    won: Rate
    lost: Rate
    sales_first: int
    sla: Sla
    time_to_touch: Distribution
    time_to_opportunity: Distribution
    time_to_close: Distribution


@dataclass(frozen=True, slots=True)
class BandKpis:
    """Conversion in one score band, with lift and the cumulative gains from the top band down."""

    label: str
    low: float
    high: float
    handoffs: int
    opportunity: Rate
    won: Rate
    rejected: Rate
    lift_opportunity: float | None
    lift_won: float | None
    cum_handoffs: float  # share of handoffs in this band and the bands above it
    cum_opportunity: float | None
    cum_won: float | None


@dataclass(frozen=True, slots=True)
class Cohort:
    """All KPIs of the handoffs of one model under one rules version."""

    model: str
    rules_version: str
    total: TierKpis
    by_tier: tuple[TierKpis, ...]
    by_band: tuple[BandKpis, ...]  # low to high score
    bands_are_deciles: bool
    lead_to_opportunity: Rate
    opportunity_to_won: Rate
    rejection_reasons: tuple[tuple[str, int], ...]  # most frequent first
    loss_reasons: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Kpis:
    """Every cohort's KPIs, the counters that belong to no handoff, and the counters themselves."""

    cohorts: tuple[Cohort, ...]
    unattributed: dict[str, int]
    duplicates: int
    overflow: int
    counters: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the report's figures file)."""
        return asdict(self)


# ---------------------------------------------------------------- arithmetic


def wilson(k: int, n: int, z: float = Z_95) -> Rate:
    """k/n with the Wilson score interval."""
    if n <= 0:
        return Rate(k, n, None, None, None)
    if not 0 <= k <= n:
        raise ValueError(f"a proportion of {k} of {n}: the counters are inconsistent")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At k = 0 and k = n the bounds are exactly 0 and 1; the float formula is off by an ulp.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return Rate(k, n, p, low, high)


def percentile(buckets: Sequence[tuple[int | None, int]], q: float) -> float | None:
    """The q-quantile (0..1) of a histogram, linear within a bucket; None when it is empty."""
    total = sum(n for _, n in buckets)
    if total == 0:
        return None
    target = q * total
    seen = 0
    lower = 0.0
    for upper, n in buckets:
        if n and seen + n >= target:
            if upper is None:
                return lower
            return lower + (upper - lower) * max(0.0, target - seen) / n
        seen += n
        if upper is not None:
            lower = float(upper)
    return lower


def distribution(counts: Mapping[str, int]) -> Distribution:
    """A Distribution from bucket label -> count."""
    buckets: list[tuple[int | None, int]] = [(b, counts.get(str(b), 0)) for b in TIME_BUCKETS_S]
    buckets.append((None, counts.get(OVER, 0)))
    return Distribution(
        sum(n for _, n in buckets),
        tuple(buckets),
        percentile(buckets, 0.5),
        percentile(buckets, 0.75),
        percentile(buckets, 0.9),
    )


def compute_kpis(counters: Mapping[str, int], tiers: Sequence[str] = ()) -> Kpis:
    """The KPIs of summed counters; `tiers` orders tiers (rules order), others follow by name."""
    cohorts: dict[tuple[str, str], dict[str, dict[tuple[str, ...], int]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    unattributed: dict[str, int] = {}
    duplicates = overflow = 0
    for name, value in counters.items():
        model, version, metric, *labels = name.split(SEP)
        if model == ALL:
            if metric == "unattributed":
                unattributed[labels[0]] = unattributed.get(labels[0], 0) + value
            elif metric == "duplicates":
                duplicates += value
            elif metric == "overflow":
                overflow += value
            continue
        table = cohorts[(model, version)][metric]
        table[tuple(labels)] = table.get(tuple(labels), 0) + value
    rank = {t: i for i, t in enumerate(tiers)}
    return Kpis(
        cohorts=tuple(
            _cohort(model, version, tables, rank)
            for (model, version), tables in sorted(cohorts.items())
        ),
        unattributed=dict(sorted(unattributed.items())),
        duplicates=duplicates,
        overflow=overflow,
        counters=dict(sorted(counters.items())),
    )


def _cohort(
    model: str, version: str, t: Mapping[str, Mapping[tuple[str, ...], int]], rank: dict[str, int]
) -> Cohort:
    def get(metric: str, *labels: str) -> int:
        return t.get(metric, {}).get(labels, 0)

    tier_names = {key[0] for metric in t for key in t[metric] if metric not in _UNTIERED}
    ordered = sorted(tier_names, key=lambda x: (rank.get(x, len(rank)), x))
    by_tier = tuple(
        _tier(name, lambda metric, *ls, n=name: get(metric, n, *ls)) for name in ordered
    )

    def total(metric: str, *labels: str) -> int:
        return sum(get(metric, name, *labels) for name in ordered)

    all_tiers = _tier("all", total)
    handoffs = all_tiers.handoffs
    opportunities = all_tiers.opportunity.k
    bands, deciles = _bands(t, handoffs, all_tiers)
    return Cohort(
        model=model,
        rules_version=version,
        total=all_tiers,
        by_tier=by_tier,
        by_band=bands,
        bands_are_deciles=deciles,
        lead_to_opportunity=wilson(opportunities, handoffs),
        opportunity_to_won=wilson(all_tiers.won.k, opportunities),
        rejection_reasons=_reasons(t.get("rejected_reason", {})),
        loss_reasons=_reasons(t.get("lost_reason", {})),
    )


Getter = Callable[..., int]
_UNTIERED: Final = frozenset({"band_handoffs", "band_stage", "rejected_reason", "lost_reason"})


def _tier(name: str, get: Getter) -> TierKpis:
    handoffs = get("handoffs")
    due, met, missed = get("sla_due"), get("sla_met"), get("sla_missed")
    return TierKpis(
        tier=name,
        handoffs=handoffs,
        accepted=wilson(get("stage", "accepted"), handoffs),
        rejected=wilson(get("stage", "rejected"), handoffs),
        touched=wilson(get("stage", "touched"), handoffs),
        opportunity=wilson(get("stage", "opportunity"), handoffs),
        won=wilson(get("stage", "won"), handoffs),
        lost=wilson(get("stage", "lost"), handoffs),
        sales_first=get("sales_first"),
        sla=Sla(
            due, met, missed, due - met - missed, get("sla_breaches"), wilson(met, met + missed)
        ),
        time_to_touch=distribution(_buckets(get, "t_touch")),
        time_to_opportunity=distribution(_buckets(get, "t_opportunity")),
        time_to_close=distribution(_buckets(get, "t_close")),
    )


def _buckets(get: Getter, metric: str) -> dict[str, int]:
    labels = [*(str(b) for b in TIME_BUCKETS_S), OVER]
    return {label: get(metric, label) for label in labels}


def _reasons(table: Mapping[tuple[str, ...], int]) -> tuple[tuple[str, int], ...]:
    merged: dict[str, int] = defaultdict(int)
    for (reason,), n in table.items():
        merged[reason] += n
    return tuple(sorted(((r, n) for r, n in merged.items() if n), key=lambda x: (-x[1], x[0])))


def _bands(
    t: Mapping[str, Mapping[tuple[str, ...], int]], handoffs: int, all_tiers: TierKpis
) -> tuple[tuple[BandKpis, ...], bool]:
    counts = t.get("band_handoffs", {})
    stages = t.get("band_stage", {})
    raw = sorted(
        ((parse_band(label), label) for (label,) in counts),
        key=lambda item: (item[0][1], item[0][2]),
    )
    fine = bool(raw) and all(parsed[0] for parsed, _ in raw)
    # groups of labels: each configured band alone, or fine buckets merged into deciles
    groups: list[list[str]] = []
    if fine:
        total = sum(counts[(label,)] for _, label in raw) or 1
        seen = 0
        current = -1
        for _, label in raw:
            n = counts[(label,)]
            decile = min(DECILES - 1, int(DECILES * (seen + n / 2) / total))
            if decile != current or not groups:
                groups.append([])
                current = decile
            groups[-1].append(label)
            seen += n
    else:
        groups = [[label] for _, label in raw]
    rows = []
    for labels in groups:
        bounds = [parse_band(label) for label in labels]
        n = sum(counts[(label,)] for label in labels)
        opp = sum(stages.get((label, "opportunity"), 0) for label in labels)
        won = sum(stages.get((label, "won"), 0) for label in labels)
        rejected = sum(stages.get((label, "rejected"), 0) for label in labels)
        rows.append((bounds[0][1], bounds[-1][2], n, opp, won, rejected))
    total_opp, total_won = all_tiers.opportunity.k, all_tiers.won.k
    cum_n = cum_opp = cum_won = 0
    built: list[BandKpis] = []
    for lo, hi, n, opp, won, rejected in reversed(rows):  # gains run from the top band down
        cum_n, cum_opp, cum_won = cum_n + n, cum_opp + opp, cum_won + won
        built.append(
            BandKpis(
                label=band_text(lo, hi),
                low=lo,
                high=hi,
                handoffs=n,
                opportunity=wilson(opp, n),
                won=wilson(won, n),
                rejected=wilson(rejected, n),
                lift_opportunity=_lift(opp, n, total_opp, handoffs),
                lift_won=_lift(won, n, total_won, handoffs),
                cum_handoffs=cum_n / handoffs if handoffs else 0.0,
                cum_opportunity=cum_opp / total_opp if total_opp else None,
                cum_won=cum_won / total_won if total_won else None,
            )
        )
    out = list(reversed(built))
    return tuple(out), fine


def _lift(k: int, n: int, k_all: int, n_all: int) -> float | None:
    if not n or not k_all or not n_all:
        return None
    return (k / n) / (k_all / n_all)


def add_counters(total: dict[str, int], deltas: Iterable[tuple[str, int]]) -> None:
    """Add deltas into `total` in place, dropping fields that reach 0 (as a reader's sum does)."""
    for name, delta in deltas:
        value = total.get(name, 0) + delta
        if value:
            total[name] = value
        else:
            total.pop(name, None)
