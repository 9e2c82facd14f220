"""The simple job's reference against the literal definition and against streamscore's oracle."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.simple_job import HALF_LIFE_MS, HANDOFF_AT, REARM_BELOW, points_of
from benchmarks.simple_reference import SimpleEvent, decayed_sum, reference
from streamscore.events import Limits, parse_event
from streamscore.events.types import TopicKind
from streamscore.scoring import reference as oracle
from streamscore.scoring import state as engine
from streamscore.scoring.engine import decide
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import load_rules

RULES = Path(__file__).resolve().parents[1] / "simple_rules.yaml"
KINDS = {
    "page_view": TopicKind.PAGE_VIEWS,
    "email_open": TopicKind.EMAIL_EVENTS,
    "download": TopicKind.DOWNLOADS,
    "unsubscribe": TopicKind.UNSUBSCRIBES,
}
DOCS: tuple[dict[str, Any], ...] = (
    {"type": "page_view", "properties": {"path": "/"}},
    {"type": "page_view", "properties": {"path": "/pricing"}},
    {"type": "page_view", "properties": {"path": "/pricing/enterprise"}},
    {"type": "page_view", "properties": {"path": "/demo"}},
    {"type": "page_view", "properties": {"path": "/book-a-demo"}},
    {"type": "page_view"},
    {"type": "email_open"},
    {"type": "download", "properties": {"content_type": "ebook"}},
    {"type": "unsubscribe"},
)
T0 = 1_790_000_000_000


def literal(
    events: list[SimpleEvent], decay_penalties: bool = True
) -> tuple[dict[str, float], set[tuple[str, str]]]:
    """Every evaluation summing every award afresh (quadratic; small inputs only)."""
    scores: dict[str, float] = {}
    handoffs = set()
    for lead in {e.lead_id for e in events}:
        mine = sorted(
            (e for e in events if e.lead_id == lead), key=lambda e: (e.time_ms, e.event_id)
        )
        awards: list[tuple[int, float]] = []
        armed = True
        for ev in mine:
            if decayed_sum(awards, ev.time_ms, decay_penalties) < REARM_BELOW:
                armed = True
            awards.append((ev.time_ms, ev.points))
            s = decayed_sum(awards, ev.time_ms, decay_penalties)
            if s < REARM_BELOW:
                armed = True
            if armed and s >= HANDOFF_AT:
                handoffs.add((lead, ev.event_id))
                armed = False
        scores[lead] = decayed_sum(awards, mine[-1].time_ms, decay_penalties)
    return scores, handoffs


event_lists = st.lists(
    st.tuples(
        st.sampled_from(["L1", "L2", "L3"]),
        st.integers(0, 40 * 86_400_000),
        st.sampled_from([1.0, 10.0, 2.0, 8.0, -30.0]),
    ),
    max_size=80,
    unique_by=lambda x: x[1],  # distinct times, as in the workload
).map(lambda xs: [SimpleEvent(lead, f"e{i}", T0 + t, p) for i, (lead, t, p) in enumerate(xs)])


@settings(max_examples=300, deadline=None)
@given(event_lists, st.booleans())
def test_reference_is_the_literal_definition(events: list[SimpleEvent], decay: bool) -> None:
    """Scores and handoffs equal those of summing every decayed award at every event."""
    want_scores, want_handoffs = literal(events, decay)
    got = reference(reversed(events), decay)  # input order must not matter
    assert got.handoffs == want_handoffs
    assert got.scores.keys() == want_scores.keys()
    for lead, s in want_scores.items():
        assert math.isclose(got.scores[lead].score, s, rel_tol=1e-9, abs_tol=1e-9)


def test_high_intent_pages_earn_ten_instead_of_one() -> None:
    """A /pricing view earns 10, not 11; deeper /pricing pages and other demos earn 1."""
    points = [points_of(d) for d in DOCS]
    assert points == [1.0, 10.0, 1.0, 10.0, 1.0, 1.0, 2.0, 8.0, -30.0]
    assert points_of({"type": "identify"}) is None


def test_handoff_rearms_below_forty() -> None:
    """50 hands off; staying at or above 40 keeps it disarmed; below 40 re-arms it, whether an
    unsubscribe or the decay itself takes it there. A millisecond of decay counts: five +10s
    a millisecond apart stay just under 50."""
    day = 86_400_000
    steps = [10.0, 10.0, 10.0, 10.0, 10.0]  # 49.99...: no handoff yet
    steps += [10.0]  # ~60: handoff (f)
    steps += [-30.0, 10.0, 10.0, 8.0]  # ~30 re-armed, ~40, ~50-, ~58: handoff (j)
    ev = [SimpleEvent("L", "abcdefghij"[i], T0 + i, p) for i, p in enumerate(steps)]
    # A week later ~29 (re-armed by decay alone), then ~37, ~47, ~57: handoff (m).
    later = [8.0, 10.0, 10.0]
    ev += [SimpleEvent("L", "klm"[i], T0 + 7 * day + 9 + i, p) for i, p in enumerate(later)]
    got = reference(ev)
    assert got.handoffs == {("L", "f"), ("L", "j"), ("L", "m")}
    assert math.isclose(got.scores["L"].score, 57.0, rel_tol=1e-6)


def test_rules_file_awards_what_simple_job_says() -> None:
    """simple_rules.yaml (streamscore's view of the job) awards the same points per event."""
    rules = load_rules(RULES)
    for i, doc in enumerate(DOCS):
        raw = {"event_id": f"e{i}", "lead_id": "L", "time": T0, **doc}
        event = parse_event(orjson.dumps(raw), KINDS[doc["type"]], T0, Limits())
        decision = decide(event, rules)
        assert sum(p for _, p in decision.awards) == points_of(doc)


steps_lists = st.lists(
    st.tuples(st.integers(0, 30 * 86_400_000), st.integers(0, len(DOCS) - 1)),
    max_size=60,
    unique_by=lambda x: x[0],
)


@settings(max_examples=150, deadline=None)
@given(steps_lists)
def test_reference_agrees_with_streamscore(steps: list[tuple[int, int]]) -> None:
    """streamscore's oracle (scoring/reference.py) and its engine (scoring/state.py) on
    simple_rules.yaml hand off at the same events as the job's reference and end with the same
    score, unsubscribes (decaying penalties) included."""
    rules = load_rules(RULES)
    assert rules.decay_penalties and rules.half_life_s * 1000 == HALF_LIFE_MS
    model = oracle.LeadState("L")
    state = engine.new_lead("L")
    by_oracle: set[tuple[str, str | None]] = set()
    by_engine: set[tuple[str, str | None]] = set()
    events = []
    for i, (t, which) in enumerate(sorted(steps)):
        doc = {"event_id": f"e{i}", "lead_id": "L", "time": T0 + t, **DOCS[which]}
        event = parse_event(orjson.dumps(doc), KINDS[doc["type"]], T0 + t, Limits())
        decision = decide(event, rules)
        out = oracle.apply_event(model, rules, f"e{i}", T0 + t, decision, 0)
        by_oracle |= {("L", o.event_id) for o in out or [] if o.kind == "handoff"}
        outputs: list[Output] = []
        engine.apply_event(state, rules, f"e{i}", T0 + t, decision, 0, outputs)
        by_engine |= {("L", o.event_id) for o in outputs if o.kind == "handoff"}
        events.append(SimpleEvent("L", f"e{i}", T0 + t, points_of(DOCS[which]) or 0.0))
    got = reference(events)
    assert got.handoffs == by_oracle == by_engine
    if events:
        last = events[-1].time_ms
        want = got.scores["L"].score
        for score in (oracle.score_at(model, rules, last), engine.score_at(state, rules, last)):
            assert math.isclose(want, score, rel_tol=1e-9, abs_tol=1e-9)
