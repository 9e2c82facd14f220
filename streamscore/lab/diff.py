"""Two models' lead states compared: tier transitions, handoffs that appear or disappear (with the
rules that made the difference), the score distribution's shift, and, joined with outcomes, each
model's precision, recall, conversion by tier, AUC and lift. Pure: snapshots in, values out.

A snapshot is what one model (the live rules, a replay, a shadow) holds for each lead; the worker
fills it from a Redis namespace, the CLI from JSON lines (streamscore.lab.files).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from streamscore.outcomes.kpi import Rate, wilson

#: The tier of a lead that one snapshot has and the other has not.
ABSENT: Final = "(absent)"
TOP_PERCENTS: Final = (1.0, 5.0, 10.0, 20.0)
QUANTILES: Final = (0.05, 0.25, 0.5, 0.75, 0.95)
HISTOGRAM_BINS: Final = 20
#: Rules listed per changed handoff: the ones whose points differ most between the models.
DRIVERS: Final = 3
GAINS_STEPS: Final = 100

Target = Literal["opportunity", "won"]
TARGETS: Final[tuple[Target, ...]] = ("opportunity", "won")


class LeadSnapshot(NamedTuple):
    """One lead under one model: tier, score, whether it was handed off, and why."""

    lead_id: str
    tier: str
    score: float
    handed_off: bool
    reasons: tuple[tuple[str, float], ...] = ()  # the top reasons, (rule id, points)
    points: Mapping[str, float] = {}  # rule id -> its points in the score now (0: leave out)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every lead of one model (a namespace: live, a replay, a shadow)."""

    model: str
    rules_version: str
    tiers: tuple[str, ...]  # the rules' order, lowest first
    leads: Mapping[str, LeadSnapshot]


class LeadOutcome(NamedTuple):
    """What sales made of a lead: an opportunity (won and lost deals imply one), a won deal."""

    opportunity: bool
    won: bool


@dataclass(frozen=True, slots=True)
class HandoffChange:
    """A lead handed off by one model and not the other."""

    lead_id: str
    change: Literal["appears", "disappears"]  # in the candidate, relative to live
    live_tier: str
    candidate_tier: str
    live_score: float | None
    candidate_score: float | None
    #: (rule id, candidate points - live points), largest difference first, zeros left out
    drivers: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class ScoreSummary:
    """One model's score distribution: quantiles, mean and counts over the shared bins."""

    model: str
    count: int
    mean: float | None
    quantiles: tuple[tuple[float, float], ...]  # (q, value); empty without leads
    histogram: tuple[int, ...]  # counts over ScoreShift.edges


@dataclass(frozen=True, slots=True)
class ScoreShift:
    """Both models' score distributions on the same bins."""

    edges: tuple[float, ...]  # HISTOGRAM_BINS + 1 edges; the last bin includes its upper edge
    live: ScoreSummary
    candidate: ScoreSummary

    @property
    def mean_shift(self) -> float | None:
        """Candidate mean - live mean."""
        if self.live.mean is None or self.candidate.mean is None:
            return None
        return self.candidate.mean - self.live.mean


@dataclass(frozen=True, slots=True)
class TargetQuality:
    """How well one model's handoffs and scores find one outcome."""

    target: Target
    positives: int  # leads of the snapshot that reached the target
    precision: Rate  # handed off and reached it / handed off
    recall: Rate  # handed off and reached it / reached it
    auc: float | None  # ROC AUC of the score; None without both classes
    lift: tuple[tuple[float, float | None], ...]  # (top k% by score, lift)
    gains: tuple[float, ...]  # share of positives in the top 0%, 1%, ... 100% by score


@dataclass(frozen=True, slots=True)
class TierConversion:
    """Conversion of the leads a model has at one tier now."""

    tier: str
    leads: int
    opportunity: Rate
    won: Rate


@dataclass(frozen=True, slots=True)
class ModelQuality:
    """One model judged against the outcomes."""

    model: str
    rules_version: str
    leads: int
    handoffs: int
    #: handed-off leads with no outcome at all: sales never saw them (a candidate's new
    #: handoffs, mostly), so they count as negatives and precision is a lower bound
    unlabelled_handoffs: int
    by_target: tuple[TargetQuality, ...]  # opportunity, won
    by_tier: tuple[TierConversion, ...]

    def target(self, target: Target) -> TargetQuality:
        """The quality against one outcome."""
        return self.by_target[TARGETS.index(target)]


@dataclass(frozen=True, slots=True)
class Diff:
    """Everything `streamscore diff` shows."""

    live: str  # "model rules_version"
    candidate: str
    leads: int  # in either snapshot
    rows: tuple[str, ...]  # live tiers (and ABSENT)
    columns: tuple[str, ...]  # candidate tiers (and ABSENT)
    matrix: tuple[tuple[int, ...], ...]  # matrix[i][j]: leads at rows[i] live, columns[j] now
    appeared: tuple[HandoffChange, ...]  # highest candidate score first
    disappeared: tuple[HandoffChange, ...]  # highest live score first
    scores: ScoreShift
    quality: tuple[ModelQuality, ModelQuality] | None  # live, candidate; None without outcomes

    def transitions(self, live_tier: str, candidate_tier: str) -> int:
        """Leads at `live_tier` under live and `candidate_tier` under the candidate."""
        return self.matrix[self.rows.index(live_tier)][self.columns.index(candidate_tier)]


# ---------------------------------------------------------------- arithmetic


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile, linear between order statistics (numpy's default, type 7)."""
    if not sorted_values:
        raise ValueError("no values")
    position = (len(sorted_values) - 1) * q
    lo = math.floor(position)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = position - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def histogram_edges(values: Iterable[float], bins: int = HISTOGRAM_BINS) -> tuple[float, ...]:
    """`bins` equal bins spanning every value (one unit wide around a single value)."""
    data = list(values)
    if not data:
        return (0.0, 1.0)
    lo, hi = min(data), max(data)
    if hi <= lo:
        lo, hi = lo - 0.5, lo + 0.5
    width = (hi - lo) / bins
    return (*(lo + i * width for i in range(bins)), hi)


def histogram(values: Iterable[float], edges: Sequence[float]) -> tuple[int, ...]:
    """Counts per bin [edge_i, edge_i+1); the last bin also holds its upper edge."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        i = bisect.bisect_right(edges, v) - 1
        if i == len(counts) and v == edges[-1]:
            i -= 1
        if 0 <= i < len(counts):
            counts[i] += 1
    return tuple(counts)


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """ROC AUC: the chance a positive outscores a negative, ties counting half (Mann-Whitney)."""
    positives = sum(labels)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        mid_rank = (i + j) / 2 + 1  # ranks i+1 .. j+1 share their mean
        rank_sum += mid_rank * sum(1 for k in range(i, j + 1) if labels[order[k]])
        i = j + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def ranked(ids: Sequence[str], scores: Sequence[float]) -> list[int]:
    """Indexes by score, highest first; ties by lead id, so a cut through them is stable."""
    return sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))


def top_count(n: int, percent: float) -> int:
    """How many leads the top `percent`% of n is: ceil, and at least one when n > 0."""
    return min(n, max(1, math.ceil(n * percent / 100 - 1e-9))) if n else 0


def lift_at(order: Sequence[int], labels: Sequence[bool], percent: float) -> float | None:
    """Positive rate in the top `percent`% (by `order`) over the positive rate of all."""
    n, positives = len(order), sum(labels)
    if not n or not positives:
        return None
    m = top_count(n, percent)
    found = sum(1 for i in order[:m] if labels[i])
    return (found / m) / (positives / n)


def gains_curve(order: Sequence[int], labels: Sequence[bool]) -> tuple[float, ...]:
    """Share of all positives within the top 0, 1, ... 100% of leads by `order`."""
    positives = sum(labels)
    if not positives:
        return ()
    cumulative = [0]
    for i in order:
        cumulative.append(cumulative[-1] + (1 if labels[i] else 0))
    n = len(order)
    return tuple(
        cumulative[0 if s == 0 else top_count(n, s * 100 / GAINS_STEPS)] / positives
        for s in range(GAINS_STEPS + 1)
    )


def drivers(
    live: LeadSnapshot | None, candidate: LeadSnapshot | None
) -> tuple[tuple[str, float], ...]:
    """The rules whose points differ most between the two (candidate - live), signed."""
    before = live.points if live is not None else {}
    after = candidate.points if candidate is not None else {}
    deltas = ((rule, after.get(rule, 0.0) - before.get(rule, 0.0)) for rule in {*before, *after})
    changed = sorted((d for d in deltas if d[1] != 0), key=lambda d: (-abs(d[1]), d[0]))
    return tuple(changed[:DRIVERS])


# ---------------------------------------------------------------- the diff


def _tier_order(snapshot: Snapshot) -> tuple[str, ...]:
    declared = list(snapshot.tiers)
    extra = sorted({lead.tier for lead in snapshot.leads.values()} - set(declared))
    return (*declared, *extra)


def transition_matrix(
    live: Snapshot, candidate: Snapshot
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """(rows, columns, counts) of live tier -> candidate tier over every lead of either."""
    ids = {*live.leads, *candidate.leads}
    pairs = Counter(
        (
            live.leads[i].tier if i in live.leads else ABSENT,
            candidate.leads[i].tier if i in candidate.leads else ABSENT,
        )
        for i in ids
    )
    rows = _tier_order(live) + ((ABSENT,) if any(i not in live.leads for i in ids) else ())
    cols = _tier_order(candidate) + (
        (ABSENT,) if any(i not in candidate.leads for i in ids) else ()
    )
    return rows, cols, tuple(tuple(pairs[(r, c)] for c in cols) for r in rows)


def handoff_changes(
    live: Snapshot, candidate: Snapshot
) -> tuple[tuple[HandoffChange, ...], tuple[HandoffChange, ...]]:
    """(appeared, disappeared): handoffs the candidate makes that live does not, and the reverse."""
    appeared: list[HandoffChange] = []
    disappeared: list[HandoffChange] = []
    for lead_id in sorted({*live.leads, *candidate.leads}):
        before, after = live.leads.get(lead_id), candidate.leads.get(lead_id)
        was = before is not None and before.handed_off
        now = after is not None and after.handed_off
        if was == now:
            continue
        change = HandoffChange(
            lead_id=lead_id,
            change="appears" if now else "disappears",
            live_tier=before.tier if before is not None else ABSENT,
            candidate_tier=after.tier if after is not None else ABSENT,
            live_score=before.score if before is not None else None,
            candidate_score=after.score if after is not None else None,
            drivers=drivers(before, after),
        )
        (appeared if now else disappeared).append(change)
    appeared.sort(key=lambda c: (-(c.candidate_score or 0.0), c.lead_id))
    disappeared.sort(key=lambda c: (-(c.live_score or 0.0), c.lead_id))
    return tuple(appeared), tuple(disappeared)


def score_summary(model: str, scores: Sequence[float], edges: Sequence[float]) -> ScoreSummary:
    """Quantiles, mean and histogram of one model's scores."""
    ordered = sorted(scores)
    return ScoreSummary(
        model=model,
        count=len(ordered),
        mean=math.fsum(ordered) / len(ordered) if ordered else None,
        quantiles=tuple((q, quantile(ordered, q)) for q in QUANTILES) if ordered else (),
        histogram=histogram(ordered, edges),
    )


def model_quality(
    snapshot: Snapshot,
    outcomes: Mapping[str, LeadOutcome],
    top_percents: Sequence[float] = TOP_PERCENTS,
) -> ModelQuality:
    """One model's handoffs and scores against the outcomes (a lead with none: no outcome)."""
    leads = sorted(snapshot.leads.values(), key=lambda lead: lead.lead_id)
    ids = [lead.lead_id for lead in leads]
    scores = [lead.score for lead in leads]
    handed = [lead.handed_off for lead in leads]
    none = LeadOutcome(False, False)
    results = [outcomes.get(i, none) for i in ids]
    order = ranked(ids, scores)
    by_target = []
    for target in TARGETS:
        labels = [getattr(r, target) for r in results]
        hits = sum(1 for h, y in zip(handed, labels, strict=True) if h and y)
        by_target.append(
            TargetQuality(
                target=target,
                positives=sum(labels),
                precision=wilson(hits, sum(handed)),
                recall=wilson(hits, sum(labels)),
                auc=roc_auc(scores, labels),
                lift=tuple((k, lift_at(order, labels, k)) for k in top_percents),
                gains=gains_curve(order, labels),
            )
        )
    by_tier = []
    for tier in _tier_order(snapshot):
        at = [r for lead, r in zip(leads, results, strict=True) if lead.tier == tier]
        by_tier.append(
            TierConversion(
                tier=tier,
                leads=len(at),
                opportunity=wilson(sum(r.opportunity for r in at), len(at)),
                won=wilson(sum(r.won for r in at), len(at)),
            )
        )
    return ModelQuality(
        model=snapshot.model,
        rules_version=snapshot.rules_version,
        leads=len(leads),
        handoffs=sum(handed),
        unlabelled_handoffs=sum(
            1 for i, h in zip(ids, handed, strict=True) if h and i not in outcomes
        ),
        by_target=tuple(by_target),
        by_tier=tuple(by_tier),
    )


def diff_snapshots(
    live: Snapshot,
    candidate: Snapshot,
    outcomes: Mapping[str, LeadOutcome] | None = None,
    bins: int = HISTOGRAM_BINS,
) -> Diff:
    """Compare a candidate's snapshot with live's, and both with the outcomes when given."""
    rows, cols, matrix = transition_matrix(live, candidate)
    appeared, disappeared = handoff_changes(live, candidate)
    live_scores = [lead.score for lead in live.leads.values()]
    candidate_scores = [lead.score for lead in candidate.leads.values()]
    edges = histogram_edges([*live_scores, *candidate_scores], bins)
    return Diff(
        live=f"{live.model} {live.rules_version}",
        candidate=f"{candidate.model} {candidate.rules_version}",
        leads=len({*live.leads, *candidate.leads}),
        rows=rows,
        columns=cols,
        matrix=matrix,
        appeared=appeared,
        disappeared=disappeared,
        scores=ScoreShift(
            edges=edges,
            live=score_summary(live.model, live_scores, edges),
            candidate=score_summary(candidate.model, candidate_scores, edges),
        ),
        quality=None
        if outcomes is None
        else (model_quality(live, outcomes), model_quality(candidate, outcomes)),
    )


# ---------------------------------------------------------------- the terminal table


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, align: str = ""
) -> str:
    """An aligned plain-text table: the first `left` columns left-aligned, the rest right, or
    each column as `align` says ("l" or "r" per column)."""
    align = align or "l" * left + "r" * (len(headers) - left)
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(w) if a == "l" else cell.rjust(w)
            for cell, w, a in zip(cells, widths, align, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rate(rate: Rate) -> str:
    if rate.value is None or rate.low is None or rate.high is None:
        return "-"
    return f"{100 * rate.value:.1f}% [{100 * rate.low:.1f}-{100 * rate.high:.1f}]"


def _drivers_text(change: HandoffChange) -> str:
    if not change.drivers:
        return "no rule's points differ: a threshold or gate did it"
    return ", ".join(f"{rule} {delta:+.1f}" for rule, delta in change.drivers)


def render_text(diff: Diff, max_leads: int = 20) -> str:
    """The diff as aligned plain-text tables, for a terminal."""
    out = [f"live: {diff.live}    candidate: {diff.candidate}    leads: {diff.leads:,}", ""]
    out.append("Tier transitions (rows: live, columns: candidate)")
    out.append(
        format_table(
            ["live \\ candidate", *diff.columns, "total"],
            [
                [r, *(f"{n:,}" for n in row), f"{sum(row):,}"]
                for r, row in zip(diff.rows, diff.matrix, strict=True)
            ],
        )
    )
    for title, changes in (
        ("Handoffs that appear", diff.appeared),
        ("Handoffs that disappear", diff.disappeared),
    ):
        out += ["", f"{title}: {len(changes):,}"]
        if changes:
            shown = changes[:max_leads]
            out.append(
                format_table(
                    ["lead", "live", "candidate", "rules that made the difference"],
                    [
                        [
                            c.lead_id,
                            f"{c.live_tier} {_num(c.live_score)}",
                            f"{c.candidate_tier} {_num(c.candidate_score)}",
                            _drivers_text(c),
                        ]
                        for c in shown
                    ],
                    left=4,
                )
            )
            if len(changes) > len(shown):
                out.append(f"... and {len(changes) - len(shown):,} more")
    s = diff.scores
    out += ["", "Score distribution"]
    headers = ["model", "leads", "mean", *(f"p{round(100 * q)}" for q in QUANTILES)]
    rows = [
        [
            summary.model,
            f"{summary.count:,}",
            _num(summary.mean),
            *(_num(v) for _, v in summary.quantiles),
        ]
        + ["-"] * (len(QUANTILES) - len(summary.quantiles))
        for summary in (s.live, s.candidate)
    ]
    out.append(format_table(headers, rows))
    if s.mean_shift is not None:
        out.append(f"mean shift: {s.mean_shift:+.2f}")
    if diff.quality is not None:
        out += ["", "Against the outcomes (precision: handed off that converted; recall: "
                "converted that were handed off; 95% intervals)"]  # fmt: skip
        rows = []
        for q in diff.quality:
            for t in q.by_target:
                rows.append(
                    [
                        q.model,
                        t.target,
                        f"{q.handoffs:,}",
                        f"{t.positives:,}",
                        _rate(t.precision),
                        _rate(t.recall),
                        _num(t.auc, 3),
                        *(_num(lift, 2) for _, lift in t.lift),
                    ]
                )
        lift_heads = [f"lift@{k:g}%" for k, _ in diff.quality[0].by_target[0].lift]
        out.append(
            format_table(
                [
                    "model",
                    "outcome",
                    "handoffs",
                    "positives",
                    "precision",
                    "recall",
                    "AUC",
                    *lift_heads,
                ],
                rows,
                left=2,
            )
        )
        for q in diff.quality:
            if q.unlabelled_handoffs:
                out.append(
                    f"{q.model}: {q.unlabelled_handoffs:,} of {q.handoffs:,} handoffs have no "
                    "outcome at all (sales never saw them): counted as not converted, so its "
                    "precision is a lower bound"
                )
        out += ["", "Conversion by tier (the tier each model gives the lead now)"]
        tier_rows = [
            [q.model, t.tier, f"{t.leads:,}", _rate(t.opportunity), _rate(t.won)]
            for q in diff.quality
            for t in q.by_tier
        ]
        out.append(format_table(["model", "tier", "leads", "opportunity", "won"], tier_rows, 2))
    return "\n".join(out) + "\n"
