"""The outcomes report: one self-contained HTML page (plotly.js inlined) and its figures as JSON.

render_report writes the files; everything else here builds values. The page opens with a summary
table, then, for each model and rules version, the charts a sales-ops reader asks about: does a
higher score convert more (conversion by score band, with 95% intervals, and cumulative gains),
conversion by tier, the first-touch SLA and how fast sales gets there, and why sales rejects.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from streamscore.outcomes.kpi import TIME_BUCKETS_S, Cohort, Kpis, Rate

REPORT_SCHEMA: Final = "streamscore.outcomes_report.v1"
NONE: Final = "\u2013"  # an en dash: no value, and the separator of an interval
CHART_HEIGHT_PX: Final = 380
_BLUE, _GREEN, _GREY, _RED, _AMBER = "#2f6fdf", "#1f9d6b", "#9aa5b1", "#d64545", "#e0a526"
CHART_CONFIG: Final = {
    "displaylogo": False,
    "responsive": True,
    # Keep only "download as PNG": the charts are small and read at a glance.
    "modeBarButtonsToRemove": [
        "zoom2d", "pan2d", "select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d",
        "resetScale2d", "hoverClosestCartesian", "hoverCompareCartesian", "toggleSpikelines",
    ],
}  # fmt: skip
CSS: Final = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       background: #f4f6f8; color: #1f2933; }
main { max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 32px 0 8px; }
.sub { color: #52606d; margin: 0 0 16px; }
.card { background: #fff; border-radius: 10px; box-shadow: 0 1px 3px rgba(0,0,0,.08);
        padding: 16px 18px; margin: 0 0 16px; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
.what { color: #52606d; font-size: 14px; margin: 0 0 4px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: right; padding: 6px 8px; border-bottom: 1px solid #e4e7eb; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
th { color: #52606d; font-weight: 600; } .ci { color: #7b8794; font-size: 12px; }
.note { color: #52606d; font-size: 13px; }
th.left, td.left { text-align: left; }
@media (max-width: 900px) { .grid { grid-template-columns: 1fr; } }
"""


@dataclass(frozen=True, slots=True)
class Chart:
    """One chart of the page: where it goes, what it shows, and its plotly figure."""

    div_id: str
    what: str
    figure: go.Figure


# ---------------------------------------------------------------- formatting


def pct(rate: Rate) -> str:
    """A rate as a percentage with one decimal, or an en dash when there is nothing to divide."""
    return NONE if rate.value is None else f"{100 * rate.value:.1f}%"


def interval(rate: Rate) -> str:
    """The 95% interval of a rate, e.g. 11.8 to 15.2% written with an en dash."""
    if rate.low is None or rate.high is None:
        return ""
    return f"{100 * rate.low:.1f}{NONE}{100 * rate.high:.1f}%"


def duration_text(seconds: float | None) -> str:
    """A duration the way people say it: 45 min, 3.5 h, 2.0 d."""
    if seconds is None:
        return NONE
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def bucket_text(upper_s: int | None) -> str:
    """The label of a time-to-X bucket."""
    if upper_s is None:
        return f"> {duration_text(TIME_BUCKETS_S[-1]).replace('.0 ', ' ')}"
    if upper_s == 0:
        return "before handoff"
    return f"≤ {duration_text(upper_s).replace('.0 ', ' ')}"


def cohort_title(cohort: Cohort) -> str:
    """How a cohort is named on the page."""
    return f"model {cohort.model} · rules {cohort.rules_version}"


# ---------------------------------------------------------------- charts


def chart_layout(
    fig: go.Figure, title: str, x_title: str, y_title: str, percent: bool
) -> go.Figure:
    """The reports' and the console's chart look: title, white template, legend on top."""
    fig.update_layout(
        title={"text": title, "x": 0.01, "y": 0.97, "font": {"size": 16}},
        template="plotly_white",
        height=CHART_HEIGHT_PX,
        margin={"l": 60, "r": 20, "t": 80, "b": 60},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0},
        showlegend=len(fig.data) > 1,
        barmode="group",
        font={"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif"},
    )
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title, rangemode="tozero")
    if percent:
        fig.update_yaxes(tickformat=".0%")
    return fig


def rate_bar(name: str, x: Sequence[str], rates: Sequence[Rate], color: str) -> go.Bar:
    """Bars of rates with their Wilson 95% intervals as whiskers."""
    values = [r.value for r in rates]
    return go.Bar(
        name=name,
        x=list(x),
        y=values,
        marker_color=color,
        error_y={
            "type": "data",
            "symmetric": False,
            "array": [
                None if r.high is None or r.value is None else r.high - r.value for r in rates
            ],
            "arrayminus": [
                None if r.low is None or r.value is None else r.value - r.low for r in rates
            ],
            "color": "#3e4c59",
            "thickness": 1.2,
        },
        customdata=[[r.k, r.n, interval(r)] for r in rates],
        hovertemplate="%{x}<br>"
        + name
        + ": %{y:.1%} (%{customdata[0]} of %{customdata[1]})<br>95% interval %{customdata[2]}"
        "<extra></extra>",
    )


def band_chart(cohort: Cohort, div_id: str) -> Chart:
    """Conversion by score band at handoff, with Wilson 95% intervals."""
    bands = cohort.by_band
    x = [b.label for b in bands]
    fig = go.Figure(
        [
            rate_bar("opportunity", x, [b.opportunity for b in bands], _BLUE),
            rate_bar("won", x, [b.won for b in bands], _GREEN),
        ]
    )
    kind = "deciles of the handoffs" if cohort.bands_are_deciles else "configured bands"
    chart_layout(
        fig, "Conversion by score at handoff", f"score band ({kind})", "share of handoffs", True
    )
    return Chart(
        div_id,
        "Share of handed-off leads that became an opportunity or a won deal, by the score they "
        "had at handoff. If the score predicts, the bars rise to the right; whiskers are 95% "
        "confidence intervals, so wide ones mean too few leads to tell.",
        fig,
    )


def gains_chart(cohort: Cohort, div_id: str) -> Chart:
    """Cumulative gains from the top score band down, against picking leads at random."""
    top_down = list(reversed(cohort.by_band))
    x = [0.0, *(b.cum_handoffs for b in top_down)]
    traces: list[go.Scatter] = []
    for name, values, color in (
        ("won deals", [b.cum_won for b in top_down], _GREEN),
        ("opportunities", [b.cum_opportunity for b in top_down], _BLUE),
    ):
        if all(v is not None for v in values):
            traces.append(
                go.Scatter(
                    name=name,
                    x=x,
                    y=[0.0, *values],
                    mode="lines+markers",
                    line={"color": color, "width": 3},
                    hovertemplate="top %{x:.0%} of handoffs by score: %{y:.0%} of "
                    + name
                    + "<extra></extra>",
                )
            )
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
    chart_layout(
        fig, "Cumulative gains", "handoffs, highest scores first", "share of outcomes", True
    )
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return Chart(
        div_id,
        "Working the leads in score order, how many of all deals you would have reached after "
        "the top x% of handoffs. The further above the dashed line, the better the score ranks.",
        fig,
    )


def tier_chart(cohort: Cohort, div_id: str) -> Chart:
    """Conversion by tier at handoff."""
    tiers = cohort.by_tier
    x = [t.tier for t in tiers]
    fig = go.Figure(
        [
            rate_bar("accepted by sales", x, [t.accepted for t in tiers], _GREY),
            rate_bar("opportunity", x, [t.opportunity for t in tiers], _BLUE),
            rate_bar("won", x, [t.won for t in tiers], _GREEN),
        ]
    )
    chart_layout(fig, "Conversion by tier at handoff", "tier at handoff", "share of handoffs", True)
    return Chart(
        div_id,
        "For each tier a lead had when it was handed off: how many sales accepted, turned into "
        "an opportunity, and won.",
        fig,
    )


def sla_chart(cohort: Cohort, div_id: str) -> Chart:
    """First-touch SLA by tier: met, missed, still open."""
    tiers = [t for t in cohort.by_tier if t.sla.due]
    x = [t.tier for t in tiers]
    fig = go.Figure(
        [
            go.Bar(name="met", x=x, y=[t.sla.met for t in tiers], marker_color=_GREEN),
            go.Bar(name="missed", x=x, y=[t.sla.missed for t in tiers], marker_color=_RED),
            go.Bar(name="open", x=x, y=[t.sla.pending for t in tiers], marker_color=_AMBER),
        ]
    )
    title = "First-touch SLA"
    if cohort.total.sla.attainment.value is not None:
        title += f": {pct(cohort.total.sla.attainment)} met"
    chart_layout(fig, title, "tier at handoff", "handoffs", False)
    fig.update_layout(barmode="stack")
    return Chart(
        div_id,
        "Handoffs whose first touch came by the tier's deadline (met), after it or never "
        "(missed), or whose deadline has not passed yet (open). Tiers without an SLA are left out.",
        fig,
    )


def touch_chart(cohort: Cohort, div_id: str) -> Chart:
    """The distribution of the time from handoff to first touch."""
    dist = cohort.total.time_to_touch
    fig = go.Figure(
        go.Bar(
            name="handoffs",
            x=[bucket_text(upper) for upper, _ in dist.buckets],
            y=[n for _, n in dist.buckets],
            marker_color=_BLUE,
            hovertemplate="%{x}: %{y} handoffs<extra></extra>",
        )
    )
    title = f"Time to first touch: median {duration_text(dist.p50_s)}, "
    title += f"90% within {duration_text(dist.p90_s)}"
    chart_layout(fig, title, "time from handoff to first touch", "handoffs", False)
    fig.update_xaxes(tickangle=-40)
    return Chart(
        div_id,
        "How long sales took to first contact a handed-off lead (a call, an email or a meeting). "
        "Percentiles are interpolated within the buckets.",
        fig,
    )


def reasons_chart(cohort: Cohort, div_id: str) -> Chart:
    """Why sales rejects handed-off leads."""
    reasons = list(reversed(cohort.rejection_reasons))
    handoffs = cohort.total.handoffs
    fig = go.Figure(
        go.Bar(
            name="rejected",
            orientation="h",
            x=[n / handoffs if handoffs else 0 for _, n in reasons],
            y=[r.replace("_", " ") for r, _ in reasons],
            marker_color=_RED,
            customdata=[n for _, n in reasons],
            hovertemplate="%{y}: %{customdata} leads (%{x:.1%} of handoffs)<extra></extra>",
        )
    )
    title = f"Rejected by sales: {pct(cohort.total.rejected)} of handoffs"
    chart_layout(fig, title, "share of handoffs", "reason", False)
    fig.update_xaxes(tickformat=".0%")
    fig.update_layout(margin={"l": 130})
    return Chart(
        div_id,
        "Handed-off leads sales turned down, by the reason the CRM gave (mapped to a short list; "
        "'other' is a reason outside it). Many 'not a fit' or 'bad data' point at the fit rules.",
        fig,
    )


def cohort_charts(cohort: Cohort, index: int) -> list[Chart]:
    """Every chart of one cohort, in page order."""
    prefix = f"c{index}"
    return [
        band_chart(cohort, f"{prefix}-bands"),
        gains_chart(cohort, f"{prefix}-gains"),
        tier_chart(cohort, f"{prefix}-tiers"),
        sla_chart(cohort, f"{prefix}-sla"),
        touch_chart(cohort, f"{prefix}-touch"),
        reasons_chart(cohort, f"{prefix}-reasons"),
    ]


# ---------------------------------------------------------------- the page


def ordered(kpis: Kpis) -> list[Cohort]:
    """Cohorts in page order: the most handoffs first (the live rules, usually)."""
    return sorted(kpis.cohorts, key=lambda c: (-c.total.handoffs, c.model, c.rules_version))


def summary_rows(kpis: Kpis) -> list[dict[str, str]]:
    """The summary table: one row per cohort (the figures the page's test reads back)."""
    rows = []
    for c in ordered(kpis):
        t = c.total
        rows.append(
            {
                "model": c.model,
                "rules version": c.rules_version,
                "handoffs": f"{t.handoffs:,}",
                "accepted": pct(t.accepted),
                "rejected": pct(t.rejected),
                "to opportunity": pct(c.lead_to_opportunity),
                "opportunity to won": pct(c.opportunity_to_won),
                "won": pct(t.won),
                "SLA met": pct(t.sla.attainment),
                "median first touch": duration_text(t.time_to_touch.p50_s),
            }
        )
    return rows


def summary_html(kpis: Kpis) -> str:
    """The summary table (one row per cohort) as HTML, every value escaped."""
    rows = summary_rows(kpis)
    if not rows:
        return '<p class="note">No handoffs yet: nothing to report.</p>'
    intervals = {
        "to opportunity": [interval(c.lead_to_opportunity) for c in ordered(kpis)],
        "won": [interval(c.total.won) for c in ordered(kpis)],
    }
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = []
    for i, row in enumerate(rows):
        cells = []
        for key, value in row.items():
            extra = intervals.get(key)
            ci = f'<br><span class="ci">{html.escape(extra[i])}</span>' if extra else ""
            cells.append(f'<td data-col="{html.escape(key)}">{html.escape(value)}{ci}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def notes_html(kpis: Kpis) -> str:
    """Notes on the counters that belong to no handoff, as HTML paragraphs."""
    parts = []
    unattributed = sum(kpis.unattributed.values())
    if unattributed:
        kinds = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in kpis.unattributed.items())
        parts.append(
            f"{unattributed:,} outcomes belong to no handoff (yet): {html.escape(kinds)}. "
            "They are sales activity on leads streamscore did not hand off in time."
        )
    if kpis.duplicates:
        parts.append(f"{kpis.duplicates:,} outcomes arrived more than once and were counted once.")
    if kpis.overflow:
        parts.append(f"{kpis.overflow:,} outcomes or handoffs exceeded a lead's limits.")
    return "".join(f'<p class="note">{p}</p>' for p in parts)


def chart_html(chart: Chart) -> str:
    """A chart card for a self-contained page (its drawing script inline)."""
    div = chart.figure.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=chart.div_id,
        default_height=f"{CHART_HEIGHT_PX}px",
        config=CHART_CONFIG,
    )
    return f'<section class="card"><p class="what">{html.escape(chart.what)}</p>{div}</section>'


def render_html(kpis: Kpis, title: str, generated_at: datetime, notes: Sequence[str] = ()) -> str:
    """The whole page as one string: plotly.js inlined, nothing fetched when it is viewed."""
    sections = []
    for i, cohort in enumerate(ordered(kpis)):
        charts = cohort_charts(cohort, i)
        pairs = [charts[j : j + 2] for j in range(0, len(charts), 2)]
        grid = "".join(
            f'<div class="grid">{"".join(chart_html(c) for c in pair)}</div>' for pair in pairs
        )
        heading = html.escape(cohort_title(cohort))
        sections.append(f'<h2 id="cohort-{i}">{heading}</h2>{grid}')
    stamp = generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body><main>'
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="sub">What sales did with the leads streamscore handed off, by model and '
        f"rules version. Generated {stamp}.</p>"
        f'<section class="card">{summary_html(kpis)}{notes_html(kpis)}{_verdicts(notes)}</section>'
        f"{''.join(sections)}</main></body></html>\n"
    )


def _verdicts(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return f'<h3>A/B comparison</h3><ul class="ab-verdicts">{items}</ul>'


def report_json(kpis: Kpis, tiers: Sequence[str], generated_at: datetime) -> dict[str, Any]:
    """The report's figures as JSON; `counters` lets `streamscore report --from-json` redo it."""
    return {
        "schema": REPORT_SCHEMA,
        "generated_at": generated_at.astimezone(UTC).isoformat(timespec="seconds"),
        "tiers": list(tiers),
        "summary": summary_rows(kpis),
        **kpis.to_json(),
    }


def render_report(
    kpis: Kpis,
    path: Path,
    *,
    tiers: Sequence[str] = (),
    title: str = "streamscore: sales outcomes",
    generated_at: datetime | None = None,
    notes: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write the HTML report at `path` and its figures next to it (.json); return both paths.

    `notes`: verdicts computed elsewhere (the A/B comparisons), listed under the summary."""
    when = generated_at or datetime.now(UTC)
    json_path = path.with_suffix(".json")
    path.write_text(render_html(kpis, title, when, notes), encoding="utf-8")
    # Infinite band edges (the open first and last bands) are written as null.
    json_path.write_bytes(
        orjson.dumps(report_json(kpis, tiers, when), option=orjson.OPT_INDENT_2, default=_float)
    )
    return path, json_path


def _float(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
