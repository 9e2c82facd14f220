"""The A/B verdicts that `streamscore kpis` and `streamscore report` print, from KPI counters."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from streamscore.cli import main
from streamscore.lab.stats import ab_statements, arm_counts, compare_arms
from streamscore.outcomes.kpi import SEP, compute_kpis
from tests.outcome_sample import sample_counters


def two_arms() -> dict[str, int]:
    """The sample's counters twice, as arms `live` and `cand` (different seeds)."""
    out: Counter[str] = Counter()
    for arm, seed in (("live", 7), ("cand", 8)):
        counters, _ = sample_counters(600, seed, versions=("v1",))
        for name, n in counters.items():
            model, *rest = name.split(SEP)
            out[SEP.join((arm, *rest)) if model != "*" else name] += n
    return dict(out)


def test_one_model_has_no_verdict() -> None:
    counters, _ = sample_counters(200, 3, versions=("v1",))
    assert ab_statements(compute_kpis(dict(counters), ())) == []


def test_each_arm_is_judged_against_the_control_for_both_stages() -> None:
    kpis = compute_kpis(two_arms(), ())
    lines = ab_statements(kpis)
    expected = [
        f"{stage} per handoff: {c.statement()}"
        for stage in ("opportunity", "won")
        for c in compare_arms(arm_counts(kpis, stage), "live")
    ]
    assert lines == expected
    assert all(" vs " in line and "for live" in line for line in lines)
    with pytest.raises(ValueError, match="not among the models"):
        ab_statements(kpis, "nope")


def test_kpis_and_report_print_the_verdicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "counters.json"
    path.write_bytes(orjson.dumps(two_arms()))
    assert main(["kpis", "--from-json", str(path), "--control", "cand"]) == 0
    out = capsys.readouterr().out
    kpis = compute_kpis(two_arms(), ())
    for line in ab_statements(kpis, "cand"):
        assert f"  {line}\n" in out
    report = tmp_path / "report.html"
    assert main(["report", "--from-json", str(path), "--out", str(report)]) == 0
    page = report.read_text(encoding="utf-8")
    assert '<ul class="ab-verdicts">' in page
    assert page.count("<li>") >= len(ab_statements(kpis))
    assert main(["kpis", "--from-json", str(path), "--control", "nope"]) == 2
