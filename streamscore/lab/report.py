"""The lab's HTML pages: a model diff and a learned model, in the style of the outcomes report.

Self-contained like it (plotly.js inlined, nothing fetched when viewed), and built from its
helpers: the page's CSS, chart layout, rate bars with Wilson whiskers and chart cards.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from streamscore.lab.diff import (
    ABSENT,
    QUANTILES,
    TARGETS,
    Diff,
    HandoffChange,
    ModelQuality,
    gains_curve,
    ranked,
)
from streamscore.lab.learn import LearnResult, calibration
from streamscore.outcomes.report import (
    CSS,
    NONE,
    Chart,
    chart_html,
    chart_layout,
    interval,
    pct,
    rate_bar,
)

_BLUE, _GREEN, _GREY, _AMBER = "#2f6fdf", "#1f9d6b", "#9aa5b1", "#e0a526"
MODEL_COLOURS: Final = (_GREY, _BLUE)  # live, candidate
MAX_LISTED: Final = 50


def page(title: str, subtitle: str, body: str, generated_at: datetime) -> str:
    """A whole page: the outcomes report's styles, plotly.js inlined, `body` in its main."""
    stamp = generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body><main>'
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="sub">{html.escape(subtitle)} Generated {stamp}.</p>'
        f"{body}</main></body></html>\n"
    )


def _grid(charts: Sequence[Chart]) -> str:
    pairs = [charts[i : i + 2] for i in range(0, len(charts), 2)]
    return "".join(
        f'<div class="grid">{"".join(chart_html(c) for c in pair)}</div>' for pair in pairs
    )


def table_html(
    table_id: str, headers: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = ()
) -> str:
    """A table in the report's style; columns in `left` (besides the first two) align left."""

    def attr(i: int) -> str:
        # A class, not a style attribute: the console's Content-Security-Policy refuses those.
        return ' class="left"' if i in left else ""

    head = "".join(f"<th{attr(i)}>{html.escape(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f"<td{attr(i)}>{html.escape(cell)}</td>" for i, cell in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _card(inner: str, what: str = "") -> str:
    lead = f'<p class="what">{html.escape(what)}</p>' if what else ""
    return f'<section class="card">{lead}{inner}</section>'


# ---------------------------------------------------------------- the diff page


def transition_chart(diff: Diff) -> Chart:
    """Leads by live tier (rows) and candidate tier (columns)."""
    fig = go.Figure(
        go.Heatmap(
            z=[list(row) for row in diff.matrix],
            x=list(diff.columns),
            y=list(diff.rows),
            colorscale="Blues",
            texttemplate="%{z}",
            hovertemplate="live %{y} → candidate %{x}: %{z} leads<extra></extra>",
            showscale=False,
        )
    )
    chart_layout(fig, "Tier transitions", "tier under the candidate", "tier under live", False)
    fig.update_yaxes(autorange="reversed", rangemode="normal")
    return Chart(
        "transitions",
        "How many leads sit at each tier under live (rows) and under the candidate (columns); "
        f"the diagonal did not move. {ABSENT} is a lead one snapshot has and the other has not.",
        fig,
    )


def score_chart(diff: Diff) -> Chart:
    """Both models' score histograms on the same bins."""
    s = diff.scores
    centres = [(a + b) / 2 for a, b in zip(s.edges, s.edges[1:], strict=False)]
    width = (s.edges[-1] - s.edges[0]) / max(1, len(centres))
    fig = go.Figure(
        [
            go.Bar(
                name=f"{summary.model} (mean {summary.mean:.1f})"
                if summary.mean is not None
                else summary.model,
                x=centres,
                y=list(summary.histogram),
                width=width,
                marker_color=colour,
                opacity=0.6,
                hovertemplate="score ≈ %{x:.0f}: %{y} leads<extra></extra>",
            )
            for summary, colour in zip((s.live, s.candidate), MODEL_COLOURS, strict=True)
        ]
    )
    chart_layout(fig, "Score distribution", "score", "leads", False)
    fig.update_layout(barmode="overlay")
    return Chart(
        "scores",
        "The scores every lead has under each model, on the same bins; a shift right means the "
        "candidate gives more points overall, a wider spread that it separates leads more.",
        fig,
    )


def precision_chart(quality: Sequence[ModelQuality]) -> Chart:
    """Precision and recall of each model's handoffs, against opportunity and won."""
    x = [f"{m} {t}" for m in ("precision", "recall") for t in TARGETS]
    bars = [
        rate_bar(
            q.model,
            x,
            [getattr(q.target(t), m) for m in ("precision", "recall") for t in TARGETS],
            colour,
        )
        for q, colour in zip(quality, MODEL_COLOURS, strict=True)
    ]
    fig = go.Figure(bars)
    chart_layout(fig, "Handoffs against outcomes", "measure and outcome", "share", True)
    return Chart(
        "precision",
        "Precision: handed-off leads that became an opportunity (or won). Recall: leads that "
        "became one and had been handed off. Whiskers are 95% intervals. A candidate's new "
        "handoffs were never seen by sales, so its precision is a lower bound.",
        fig,
    )


def tier_conversion_chart(quality: Sequence[ModelQuality]) -> Chart:
    """Opportunity rate by the tier each model gives the lead."""
    bars = [
        rate_bar(
            q.model,
            [t.tier for t in q.by_tier],
            [t.opportunity for t in q.by_tier],
            colour,
        )
        for q, colour in zip(quality, MODEL_COLOURS, strict=True)
    ]
    fig = go.Figure(bars)
    chart_layout(fig, "Opportunity rate by tier", "tier", "share of leads", True)
    return Chart(
        "tiers",
        "For each tier, the share of its leads that became an opportunity, under each model. "
        "A better model has a steeper staircase: fewer opportunities left in its low tiers.",
        fig,
    )


def gains_chart(
    div_id: str, title: str, curves: Sequence[tuple[str, Sequence[float], str]]
) -> Chart:
    """Cumulative gains curves (share of positives in the top x% by score) against random."""
    traces = [
        go.Scatter(
            name=name,
            x=[i / (len(g) - 1) for i in range(len(g))],
            y=list(g),
            mode="lines",
            line={"color": colour, "width": 3},
            hovertemplate="top %{x:.0%}: %{y:.0%} of outcomes<extra></extra>",
        )
        for name, g, colour in curves
        if g
    ]
    traces.append(
        go.Scatter(
            name="random order",
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"color": _GREY, "dash": "dash"},
            hoverinfo="skip",
        )
    )
    fig = go.Figure(traces)
    chart_layout(fig, title, "leads, highest scores first", "share of outcomes", True)
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return Chart(
        div_id,
        "Working the leads in score order, the share of all outcomes reached after the top x%. "
        "The higher the curve, the better the score ranks.",
        fig,
    )


def changes_table(table_id: str, changes: Sequence[HandoffChange]) -> str:
    """The handoffs that appear or disappear, with the rules that made the difference."""

    def score(value: float | None) -> str:
        return NONE if value is None else f"{value:.1f}"

    rows = [
        [
            c.lead_id,
            f"{c.live_tier} {score(c.live_score)}",
            f"{c.candidate_tier} {score(c.candidate_score)}",
            ", ".join(f"{rule} {delta:+.1f}" for rule, delta in c.drivers)
            or "no rule's points differ: a threshold or gate did it",
        ]
        for c in changes[:MAX_LISTED]
    ]
    more = len(changes) - len(rows)
    note = f'<p class="note">... and {more:,} more.</p>' if more > 0 else ""
    headers = ["lead", "live", "candidate", "rules that made the difference"]
    return table_html(table_id, headers, rows, left=(2, 3)) + note


def quality_table(quality: Sequence[ModelQuality]) -> str:
    """Each model's precision, recall, AUC and lift against the outcomes."""
    rows = []
    for q in quality:
        for t in q.by_target:
            rows.append(
                [
                    q.model,
                    t.target,
                    f"{q.handoffs:,}",
                    f"{pct(t.precision)} {interval(t.precision)}",
                    f"{pct(t.recall)} {interval(t.recall)}",
                    NONE if t.auc is None else f"{t.auc:.3f}",
                    *(NONE if v is None else f"{v:.2f}" for _, v in t.lift),
                ]
            )
    lifts = [f"lift top {k:g}%" for k, _ in quality[0].by_target[0].lift]
    headers = ["model", "outcome", "handoffs", "precision", "recall", "AUC", *lifts]
    return table_html("quality", headers, rows)


def diff_summary_html(diff: Diff) -> str:
    """Both models' score quantiles, and how many handoffs appear and disappear."""
    s = diff.scores
    quantile_rows = [
        [x.model, f"{x.count:,}", NONE if x.mean is None else f"{x.mean:.1f}"]
        + [f"{v:.1f}" for _, v in x.quantiles]
        for x in (s.live, s.candidate)
    ]
    summary = table_html(
        "summary",
        ["model", "leads", "mean", *(f"p{round(100 * q)}" for q in QUANTILES)],
        quantile_rows,
    )
    return (
        summary + f'<p class="note">{len(diff.appeared):,} handoffs appear and '
        f"{len(diff.disappeared):,} disappear under the candidate, among "
        f"{diff.leads:,} leads.</p>"
    )


def quality_charts(quality: tuple[ModelQuality, ModelQuality]) -> list[Chart]:
    """Both models against the outcomes: precision and recall, tier conversion, gains."""
    live_q, cand_q = quality
    return [
        precision_chart(quality),
        tier_conversion_chart(quality),
        *(
            gains_chart(
                f"gains-{t}",
                f"Cumulative gains: {t}",
                [
                    (q.model, q.target(t).gains, colour)
                    for q, colour in zip((live_q, cand_q), MODEL_COLOURS, strict=True)
                ],
            )
            for t in TARGETS
        ),
    ]


def render_diff_html(diff: Diff, generated_at: datetime) -> str:
    """The diff page: summary, transitions, changed handoffs, scores, outcomes if known."""
    body = [
        _card(diff_summary_html(diff)),
        _grid([transition_chart(diff), score_chart(diff)]),
        "<h2>Handoffs that appear</h2>",
        _card(
            changes_table("appeared", diff.appeared),
            "Handed off by the candidate, not by "
            "live; the rules whose points differ most for the lead, candidate minus live.",
        ),
        "<h2>Handoffs that disappear</h2>",
        _card(
            changes_table("disappeared", diff.disappeared),
            "Handed off by live, not by the candidate.",
        ),
    ]
    if diff.quality is not None:
        body += [
            "<h2>Against the outcomes</h2>",
            _card(quality_table(diff.quality)),
            _grid(quality_charts(diff.quality)),
        ]
    return page(
        f"streamscore diff: {diff.live} → {diff.candidate}",
        "What the candidate rules would change, lead by lead, and how both models fare against "
        "what sales made of the leads.",
        "".join(body),
        generated_at,
    )


# ---------------------------------------------------------------- the learn page


def calibration_chart(result: LearnResult) -> Chart:
    """Predicted probability against the observed rate, in tenths of the held-out examples."""
    held = result.held_out
    points = calibration(held.labels, held.learned)
    fig = go.Figure(
        [
            go.Scatter(
                name="learned model",
                x=[p for p, _, _ in points],
                y=[o for _, o, _ in points],
                mode="lines+markers",
                line={"color": _BLUE, "width": 3},
                customdata=[n for _, _, n in points],
                hovertemplate="predicted %{x:.0%}: observed %{y:.0%} of %{customdata}"
                "<extra></extra>",
            ),
            go.Scatter(
                name="perfect calibration",
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                line={"color": _GREY, "dash": "dash"},
                hoverinfo="skip",
            ),
        ]
    )
    chart_layout(fig, "Calibration (held out)", "predicted probability", "observed rate", True)
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return Chart(
        "calibration",
        f"Held-out examples in ten equal groups by the learned probability of {result.target}: "
        "the share that reached it against the probability predicted. On the diagonal, the "
        "model's probabilities can be read as chances.",
        fig,
    )


def learn_gains_chart(result: LearnResult) -> Chart:
    """Gains of the learned model, its exported points and the current score, held out."""
    held = result.held_out
    ids = list(held.lead_ids)
    curves = [
        ("learned model", gains_curve(ranked(ids, list(held.learned)), held.labels), _BLUE),
        ("exported points", gains_curve(ranked(ids, list(held.exported)), held.labels), _GREEN),
        ("current rules", gains_curve(ranked(ids, list(held.current)), held.labels), _AMBER),
    ]
    return gains_chart("gains", f"Cumulative gains: {result.target} (held out)", curves)


def _auc(value: float | None) -> str:
    return NONE if value is None else f"{value:.3f}"


def render_learn_html(result: LearnResult, candidate_version: str, generated_at: datetime) -> str:
    """The learn page: held-out AUCs, gains and calibration charts, and every weight."""
    summary = table_html(
        "summary",
        ["", "held-out AUC"],
        [
            ["learned model (all features)", _auc(result.auc_learned)],
            [f"exported points ({candidate_version})", _auc(result.auc_exported)],
            [f"current rules ({result.rules_version})", _auc(result.auc_current)],
        ],
    )
    facts = (
        f"Target: {result.target}. Trained on {result.train_examples:,} handoffs "
        f"({result.train_positives:,} reached it), judged on {result.test_examples:,} held out "
        f"({result.test_positives:,}); seed {result.seed}, L2 strength C = {result.c:g}. "
        f"Points are {result.scale:.2f} per unit of log-odds, so the handoffs' mean score is "
        "unchanged and the tiers keep their meaning."
    )
    if result.unknown_features:
        facts += f" Ignored (not in the rules): {', '.join(result.unknown_features)}."
    weight_rows = [
        [
            w.name,
            w.kind,
            f"{w.support:,}",
            NONE if w.coefficient is None else f"{w.coefficient:+.4f}",
            NONE if w.old_points is None else f"{w.old_points:g}",
            NONE if w.new_points is None else f"{w.new_points:g}",
            w.note,
        ]
        for w in result.weights
    ]
    weights = table_html(
        "weights",
        [
            "feature",
            "kind",
            "support",
            "log-odds per unit",
            "points now",
            "points exported",
            "note",
        ],
        weight_rows,
    )
    body = [
        _card(summary + f'<p class="note">{html.escape(facts)}</p>'),
        _grid([learn_gains_chart(result), calibration_chart(result)]),
        "<h2>Weights</h2>",
        _card(
            weights,
            "Log-odds per point of the rule now (engagement) or per match (fit, BANT); exported "
            "points are those scaled and rounded. BANT criteria gate the handoff and have no "
            "points, so their weights are shown, not exported.",
        ),
    ]
    return page(
        f"streamscore learn: {result.rules_version} → {candidate_version}",
        "Weights learned from outcomes, judged on handoffs the fit never saw.",
        "".join(body),
        generated_at,
    )
