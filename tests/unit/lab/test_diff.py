"""The diff against brute force: transitions, changed handoffs, precision, recall, AUC, lift."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from streamscore.lab.diff import (
    ABSENT,
    QUANTILES,
    LeadOutcome,
    LeadSnapshot,
    Snapshot,
    diff_snapshots,
    format_table,
    histogram,
    histogram_edges,
    lift_at,
    quantile,
    ranked,
    render_text,
    roc_auc,
    top_count,
)
from streamscore.lab.errors import LabInputError
from streamscore.lab.files import read_outcomes, read_snapshot

TIERS = ("cold", "warm", "hot")
RULES = ("pricing_page", "email_click", "title_executive", "unsubscribe")
POOL = [f"lead-{i:02d}" for i in range(24)]


@st.composite
def snapshots(draw: st.DrawFn, model: str) -> Snapshot:
    ids = draw(st.sets(st.sampled_from(POOL), max_size=len(POOL)))
    leads = {}
    for lead_id in sorted(ids):
        points = draw(
            st.dictionaries(st.sampled_from(RULES), st.integers(-30, 40).map(float), max_size=4)
        )
        leads[lead_id] = LeadSnapshot(
            lead_id=lead_id,
            tier=draw(st.sampled_from(TIERS)),
            # few distinct scores, so that ties (AUC, lift, quantiles) are common
            score=draw(st.integers(-5, 12).map(lambda s: s * 7.5)),
            handed_off=draw(st.booleans()),
            reasons=(),
            points=points,
        )
    return Snapshot(model, f"{model}-v1", TIERS, leads)


outcome_maps = st.dictionaries(
    st.sampled_from(POOL),
    st.tuples(st.booleans(), st.booleans()).map(lambda t: LeadOutcome(t[0] or t[1], t[1])),
)


def tier_of(snapshot: Snapshot, lead_id: str) -> str:
    lead = snapshot.leads.get(lead_id)
    return ABSENT if lead is None else lead.tier


@settings(max_examples=60, deadline=None)
@given(snapshots("live"), snapshots("candidate"))
def test_transitions_and_changed_handoffs_match_brute_force(
    live: Snapshot, candidate: Snapshot
) -> None:
    diff = diff_snapshots(live, candidate)
    union = set(live.leads) | set(candidate.leads)
    for r in (*TIERS, ABSENT):
        for c in (*TIERS, ABSENT):
            expected = sum(1 for i in union if tier_of(live, i) == r and tier_of(candidate, i) == c)
            if r in diff.rows and c in diff.columns:
                assert diff.transitions(r, c) == expected
            else:
                assert expected == 0  # a row or column is left out only when it is empty
    assert sum(map(sum, diff.matrix)) == len(union) == diff.leads

    def handed(s: Snapshot, i: str) -> bool:
        return i in s.leads and s.leads[i].handed_off

    appears = {i for i in union if handed(candidate, i) and not handed(live, i)}
    disappears = {i for i in union if handed(live, i) and not handed(candidate, i)}
    assert {c.lead_id for c in diff.appeared} == appears
    assert {c.lead_id for c in diff.disappeared} == disappears
    for change in (*diff.appeared, *diff.disappeared):
        before = live.leads[change.lead_id].points if change.lead_id in live.leads else {}
        after = candidate.leads[change.lead_id].points if change.lead_id in candidate.leads else {}
        deltas = {r: after.get(r, 0.0) - before.get(r, 0.0) for r in RULES}
        biggest = max((abs(d) for d in deltas.values()), default=0.0)
        assert all(deltas[rule] == delta != 0 for rule, delta in change.drivers)
        if biggest:
            assert abs(change.drivers[0][1]) == biggest
            # every rule left out differs no more than the last one listed
            listed = {rule for rule, _ in change.drivers}
            assert all(abs(deltas[r]) <= abs(change.drivers[-1][1]) for r in set(RULES) - listed)
        else:
            assert change.drivers == ()


@settings(max_examples=50, deadline=None)
@given(snapshots("live"), snapshots("candidate"), outcome_maps)
def test_quality_matches_brute_force_and_sklearn(
    live: Snapshot, candidate: Snapshot, outcomes: dict[str, LeadOutcome]
) -> None:
    diff = diff_snapshots(live, candidate, outcomes)
    assert diff.quality is not None
    for snapshot, quality in zip((live, candidate), diff.quality, strict=True):
        leads = list(snapshot.leads.values())
        handed = {lead.lead_id for lead in leads if lead.handed_off}
        assert quality.handoffs == len(handed)
        assert quality.unlabelled_handoffs == len(handed - set(outcomes))
        for target in ("opportunity", "won"):
            positive = {
                lead.lead_id
                for lead in leads
                if getattr(outcomes.get(lead.lead_id, LeadOutcome(False, False)), target)
            }
            t = quality.target(target)
            assert (t.precision.k, t.precision.n) == (len(handed & positive), len(handed))
            assert (t.recall.k, t.recall.n) == (len(handed & positive), len(positive))
            labels = [lead.lead_id in positive for lead in leads]
            scores = [lead.score for lead in leads]
            if 0 < sum(labels) < len(labels):
                assert t.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
            else:
                assert t.auc is None
            for k, lift in t.lift:
                assert lift == brute_lift(leads, positive, k)
        for row in quality.by_tier:
            at = [lead for lead in leads if lead.tier == row.tier]
            assert row.leads == len(at)
            opp = sum(
                1
                for lead in at
                if outcomes.get(lead.lead_id, LeadOutcome(False, False)).opportunity
            )
            assert row.opportunity.k == opp


def brute_lift(leads: list[LeadSnapshot], positive: set[str], percent: float) -> float | None:
    """Rank each lead by how many come before it (score down, then id), then count the top."""
    n = len(leads)
    if not n or not positive:
        return None
    m = max(1, math.ceil(n * percent / 100 - 1e-9))
    top = [
        a
        for a in leads
        if sum(1 for b in leads if (-b.score, b.lead_id) < (-a.score, a.lead_id)) < m
    ]
    assert len(top) == m
    return (sum(1 for a in top if a.lead_id in positive) / m) / (len(positive) / n)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6).map(float), st.booleans()), max_size=60))
def test_auc_is_the_share_of_correctly_ordered_pairs(pairs: list[tuple[float, bool]]) -> None:
    scores = [s for s, _ in pairs]
    labels = [y for _, y in pairs]
    pos = [s for s, y in pairs if y]
    neg = [s for s, y in pairs if not y]
    if not pos or not neg:
        assert roc_auc(scores, labels) is None
        return
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    assert roc_auc(scores, labels) == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=80),
    st.lists(st.floats(-1e4, 1e4, allow_nan=False), max_size=80),
)
def test_quantiles_and_histogram_match_numpy(a: list[float], b: list[float]) -> None:
    ordered = sorted(a)
    for q in QUANTILES:
        assert quantile(ordered, q) == pytest.approx(
            float(np.quantile(np.array(a), q)), rel=1e-9, abs=1e-9
        )
    edges = histogram_edges([*a, *b])
    assert len(edges) == 21
    assert sum(histogram(a, edges)) == len(a)  # every value lands in a bin
    counts, _ = np.histogram(np.array(a), bins=np.array(edges))
    assert histogram(a, edges) == tuple(int(c) for c in counts)


def test_lift_counts_the_top_slice() -> None:
    ids = [f"l{i}" for i in range(10)]
    scores = [float(10 - i) for i in range(10)]
    labels = [True, True, False, False, False, False, False, False, False, True]
    order = ranked(ids, scores)
    assert top_count(10, 10) == 1
    assert top_count(10, 25) == 3
    assert lift_at(order, labels, 10) == pytest.approx(1 / (3 / 10))
    assert lift_at(order, labels, 20) == pytest.approx(1 / (3 / 10))
    assert lift_at(order, labels, 100) == pytest.approx(1.0)
    assert lift_at(order, [False] * 10, 10) is None


def test_format_table_aligns_columns() -> None:
    table = format_table(["name", "n", "rate"], [["a", "1", "5.0%"], ["longer", "1,000", "50%"]])
    lines = table.splitlines()
    assert lines[0] == "name        n  rate"
    assert {len(line) for line in lines} == {len(lines[1])}
    assert lines[3] == "longer  1,000   50%"


def sample_pair() -> tuple[Snapshot, Snapshot, dict[str, LeadOutcome]]:
    live = Snapshot(
        "live",
        "v1",
        TIERS,
        {
            "a": LeadSnapshot(
                "a", "hot", 95.0, True, (("pricing_page", 30.0),), {"pricing_page": 30.0}
            ),
            "b": LeadSnapshot("b", "warm", 50.0, False, (), {"pricing_page": 10.0}),
            "c": LeadSnapshot("c", "cold", 5.0, False, (), {}),
        },
    )
    candidate = Snapshot(
        "candidate",
        "v2",
        TIERS,
        {
            "a": LeadSnapshot("a", "warm", 60.0, False, (), {"pricing_page": 15.0}),
            "b": LeadSnapshot(
                "b", "hot", 120.0, True, (), {"pricing_page": 5.0, "title_executive": 75.0}
            ),
            "d": LeadSnapshot("d", "cold", 0.0, False, (), {}),
        },
    )
    return live, candidate, {"b": LeadOutcome(True, True), "a": LeadOutcome(False, False)}


def test_render_text_shows_every_section() -> None:
    live, candidate, outcomes = sample_pair()
    diff = diff_snapshots(live, candidate, outcomes)
    assert diff.transitions("hot", "warm") == 1
    assert diff.transitions("warm", "hot") == 1
    assert diff.transitions(ABSENT, "cold") == 1
    assert diff.transitions("cold", ABSENT) == 1
    text = render_text(diff)
    assert "Handoffs that appear: 1" in text
    assert "title_executive +75.0, pricing_page -5.0" in text
    assert "Handoffs that disappear: 1" in text
    assert "pricing_page -15.0" in text
    assert "mean shift: +10.00" in text
    assert "Conversion by tier" in text
    assert render_text(diff_snapshots(live, candidate)).count("Against the outcomes") == 0


def test_snapshot_and_outcome_files_round_trip(tmp_path: Path) -> None:
    live, _, _ = sample_pair()
    path = tmp_path / "live.jsonl"
    lines: list[dict[str, object]] = [
        {"model": "live", "rules_version": "v1", "tiers": list(TIERS)}
    ]
    lines += [
        {
            "lead_id": lead.lead_id,
            "tier": lead.tier,
            "score": lead.score,
            "handed_off": lead.handed_off,
            "reasons": [list(r) for r in lead.reasons],
            "points": dict(lead.points),
        }
        for lead in live.leads.values()
    ]
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    assert read_snapshot(path) == live
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text(
        '{"lead_id": "a", "type": "sales_accepted"}\n'
        '{"lead_id": "b", "type": "lost"}\n'
        '{"lead_id": "c", "won": true}\n\n'
        '{"lead_id": "b", "type": "first_touch"}\n',
        encoding="utf-8",
    )
    assert read_outcomes(outcomes) == {
        "a": LeadOutcome(False, False),
        "b": LeadOutcome(True, False),
        "c": LeadOutcome(True, True),
    }


def test_bad_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"lead_id": "a", "tier": "hot", "score": 1}\n{"lead_id": "b"}\n')
    with pytest.raises(LabInputError, match=r"s\.jsonl:2: 'tier' must be a non-empty string"):
        read_snapshot(path)
    path.write_text('{"lead_id": "a", "tier": "hot", "score": "x"}\n')
    with pytest.raises(LabInputError, match=r":1: 'score' must be a finite number"):
        read_snapshot(path)
    path.write_text("{not json\n")
    with pytest.raises(LabInputError, match=r":1: not JSON"):
        read_outcomes(path)
    path.write_text('{"lead_id": "a", "type": "signed"}\n')
    with pytest.raises(LabInputError, match="unknown outcome type 'signed'"):
        read_outcomes(path)
