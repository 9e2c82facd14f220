"""A lead's page: its judged view, contributions, story and the score-over-time chart; pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import plotly.graph_objects as go

from streamscore.outcomes.report import chart_layout
from streamscore.scoring.explain import describe_lead
from streamscore.scoring.rules import CompiledRules
from streamscore.scoring.state import LeadState, engagement_at, score_at
from streamscore.scoring.story import StoryItem
from streamscore.scoring.story import items as story_items
from streamscore.web.console.queue import account_attribute

#: Points of each exact curve (the score decaying since the last moment, engagement, fit).
CURVE_POINTS: Final = 48
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_BLUE, _GREEN, _GREY, _RED, _AMBER = "#2f6fdf", "#1f9d6b", "#9aa5b1", "#d64545", "#e0a526"
_SYMBOLS: Final = {
    "event": "circle",
    "decay": "triangle-down",
    "handoff": "star",
    "tier": "diamond",
    "outcome": "square",
    "merge": "cross",
    "recycle": "x",
    "sla": "hourglass",
}
ContributionKind = Literal["engagement", "penalty", "fit"]


@dataclass(frozen=True, slots=True)
class Contribution:
    """One rule's points in the score now."""

    rule: str
    kind: ContributionKind
    points: float


@dataclass(frozen=True, slots=True)
class LeadView:
    """Everything the lead page shows."""

    info: dict[str, Any]  # describe_lead's view at now
    account: str | None
    contributions: tuple[Contribution, ...]
    events: tuple[StoryItem, ...]  # newest first
    moments: tuple[StoryItem, ...]  # handoffs, tier changes, outcomes, merges...; newest first
    chart: go.Figure


def chart_time(time_ms: int) -> str:
    """A time as plotly reads it on a date axis (UTC, no offset: plotly ignores offsets)."""
    return (_EPOCH + timedelta(milliseconds=time_ms)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _grid(start_ms: int, end_ms: int) -> list[int]:
    if end_ms <= start_ms:
        return [start_ms]
    step = (end_ms - start_ms) / (CURVE_POINTS - 1)
    return [round(start_ms + i * step) for i in range(CURVE_POINTS)]


def contributions(info: dict[str, Any], rules: CompiledRules) -> tuple[Contribution, ...]:
    """describe_lead's contributions, each marked engagement, penalty or fit."""
    engagement_rules = set(rules.rule_ids)
    out = []
    for c in info["contributions"]:
        rule, points = str(c["rule"]), float(c["points"])
        kind: ContributionKind = "fit"
        if rule in engagement_rules:
            kind = "penalty" if points < 0 else "engagement"
        out.append(Contribution(rule, kind, points))
    return tuple(out)


def score_chart(state: LeadState, rules: CompiledRules, now_ms: int) -> go.Figure:
    """The score over time, with engagement and fit where they are known, and the tier thresholds.

    The story gives the score after each moment. Since the last moment nothing has happened but
    decay, so that stretch is drawn exactly from the state (scoring.state.score_at), as are
    engagement since its newest award (earlier awards are folded into one sum) and fit since the
    profile last changed (older values are overwritten). Earlier fit and engagement are unknown
    and not drawn.
    """
    at = now_ms if state.last_ms is None else max(now_ms, state.last_ms)
    story = story_items(state)
    traces: list[go.Scatter] = []
    if story:
        traces.append(
            go.Scatter(
                name="score",
                x=[chart_time(i.time_ms) for i in story],
                y=[i.score for i in story],
                mode="lines+markers",
                line={"color": _BLUE, "width": 2},
                marker={"size": 9, "symbol": [_SYMBOLS.get(i.kind, "circle") for i in story]},
                text=[f"{i.kind}: {i.label}" for i in story],
                hovertemplate="%{x}<br>%{text}<br>score %{y:.1f}<extra></extra>",
            )
        )
    if state.last_ms is not None:
        grid = _grid(state.last_ms, at)
        traces.append(
            go.Scatter(
                name="score since (decay)",
                x=[chart_time(t) for t in grid],
                y=[score_at(state, rules, t) for t in grid],
                mode="lines",
                line={"color": _BLUE, "width": 2, "dash": "dot"},
                hovertemplate="%{x}<br>score %{y:.1f}<extra></extra>",
            )
        )
    if state.anchor_ms is not None:
        grid = _grid(state.anchor_ms, at)
        traces.append(
            go.Scatter(
                name="engagement",
                x=[chart_time(t) for t in grid],
                y=[engagement_at(state, rules, t) for t in grid],
                mode="lines",
                line={"color": _GREEN, "width": 1.5},
                hovertemplate="%{x}<br>engagement %{y:.1f}<extra></extra>",
            )
        )
    fit_since = max((r.time_ms for r in (state.profile or {}).values()), default=None)
    if fit_since is None and story:
        fit_since = story[0].time_ms  # no profile yet: fit has been 0 all along
    if fit_since is not None:
        traces.append(
            go.Scatter(
                name="fit",
                x=[chart_time(fit_since), chart_time(max(fit_since, at))],
                y=[state.fit, state.fit],
                mode="lines",
                line={"color": _AMBER, "width": 1.5},
                hovertemplate="fit %{y:.1f}<extra></extra>",
            )
        )
    fig = go.Figure(traces)
    chart_layout(fig, "Score over time", "time (UTC)", "points", False)
    fig.update_layout(showlegend=True, margin={"r": 140})
    fig.update_xaxes(type="date")
    fig.update_yaxes(rangemode="normal")
    for tier in rules.tiers[1:]:
        fig.add_hline(
            y=tier.enter,
            line={"color": _RED, "dash": "dash", "width": 1},
            annotation_text=f"{tier.name} from {tier.enter:g}",
            annotation_position="right",
        )
        if tier.exit != tier.enter:
            fig.add_hline(
                y=tier.exit,
                line={"color": _GREY, "dash": "dot", "width": 1},
                annotation_text=f"{tier.name} until below {tier.exit:g}",
                annotation_position="right",
            )
    return fig


def lead_view(state: LeadState, rules: CompiledRules, now_ms: int) -> LeadView:
    """The lead page's values, judged at now."""
    info = describe_lead(state, rules, now_ms)
    domain = account_attribute(rules)
    account = info["attributes"].get(domain) if domain else None
    story = list(reversed(story_items(state)))
    return LeadView(
        info=info,
        account=None if account is None else str(account["value"]),
        contributions=contributions(info, rules),
        events=tuple(i for i in story if i.kind == "event"),
        moments=tuple(i for i in story if i.kind != "event"),
        chart=score_chart(state, rules, now_ms),
    )
