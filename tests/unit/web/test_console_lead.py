"""The lead page's values: the chart drawn from the story and the state, the story split."""

from __future__ import annotations

import math

from streamscore.events.envelope import Event
from streamscore.runtime.lanes import Model
from streamscore.runtime.leads import CachedLead
from streamscore.runtime.scorer import Facts, GroupWork, Scorer
from streamscore.scoring import state
from streamscore.scoring.engine import decide
from streamscore.scoring.story import items
from streamscore.web.console.lead import CURVE_POINTS, chart_time, lead_view, score_chart
from tests.state_support import HOUR, MIN, RULES_1H, T0, Ev

RULES = RULES_1H
EVENTS = [
    (T0, Ev("identify", traits={"title": "VP Sales", "size": 900})),
    (T0 + 10 * MIN, Ev("page_view", {"path": "/pricing"})),
    (T0 + 20 * MIN, Ev("email_click")),
    (T0 + 40 * MIN, Ev("trial_signup")),
]


def told_lead() -> state.LeadState:
    """A lead scored, and its story told, by the worker's own per-record rules (Scorer)."""
    scorer = Scorer(dedup_window_ms=0, story_keep=12, sla_topic="sla")
    lead = CachedLead("key", 0, state.new_lead("<b>ann</b>"), 0, b"", None)
    for i, (t, ev) in enumerate(EVENTS):
        event = Event(f"e{i}", "<b>ann</b>", ev.type, t, ev.properties, ev.context, ev.traits)
        assert scorer.event(lead, event, t, GroupWork(), Model("live", RULES), Facts())
    return lead.state


def test_the_chart_draws_the_story_and_the_exact_stretch_since() -> None:
    lead = told_lead()
    now = T0 + 3 * HOUR
    fig = score_chart(lead, RULES, now)
    traces = {t.name: t for t in fig.data}
    assert list(traces) == ["score", "score since (decay)", "engagement", "fit"]
    story = items(lead)
    assert [k.kind for k in story].count("event") == len(EVENTS)
    assert list(traces["score"].y) == [i.score for i in story]
    assert list(traces["score"].x) == [chart_time(i.time_ms) for i in story]
    since = traces["score since (decay)"]
    assert len(since.x) == CURVE_POINTS
    assert (since.x[0], since.x[-1]) == (chart_time(EVENTS[-1][0]), chart_time(now))
    assert math.isclose(since.y[0], story[-1].score, abs_tol=0.05)
    assert math.isclose(since.y[-1], state.score_at(lead, RULES, now), rel_tol=1e-12)
    assert list(since.y) == sorted(since.y, reverse=True), "nothing but decay since"
    engagement = traces["engagement"]
    assert engagement.x[0] == chart_time(EVENTS[-1][0])  # the newest award
    assert math.isclose(engagement.y[-1], state.engagement_at(lead, RULES, now))
    fit = traces["fit"]
    assert list(fit.y) == [lead.fit, lead.fit] == [35.0, 35.0]
    assert fit.x[0] == chart_time(T0)  # the profile's last change
    lines = sorted(shape.y0 for shape in fig.layout.shapes)
    assert lines == sorted(y for t in RULES.tiers[1:] for y in (t.enter, t.exit))


def test_the_page_lists_events_and_moments_newest_first() -> None:
    lead = told_lead()
    view = lead_view(lead, RULES, T0 + HOUR)
    assert [i.label for i in view.events] == [ev.type for _, ev in reversed(EVENTS)]
    kinds = [i.kind for i in view.moments]
    assert "handoff" in kinds and "tier" in kinds and "event" not in kinds
    assert [i.time_ms for i in view.moments] == sorted(
        (i.time_ms for i in view.moments), reverse=True
    )
    by_rule = {c.rule: c for c in view.contributions}
    assert by_rule["exec"].kind == "fit" and by_rule["trial"].kind == "engagement"
    assert by_rule["exec"].points == 20.0
    assert view.info["lead_id"] == "<b>ann</b>"


def test_a_lead_without_a_story_still_has_a_chart() -> None:
    lead = state.new_lead("quiet")
    state.apply_event(lead, RULES, "e1", T0, decide(Ev("email_click"), RULES), 0, [])
    fig = score_chart(lead, RULES, T0 + HOUR)
    assert [t.name for t in fig.data] == ["score since (decay)", "engagement"]
