"""The report's files (self-contained HTML, JSON that redoes it) and `streamscore report`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from plotly.offline import get_plotlyjs

from streamscore.cli import main
from streamscore.outcomes.kpi import compute_kpis, wilson
from streamscore.outcomes.report import (
    REPORT_SCHEMA,
    bucket_text,
    duration_text,
    interval,
    pct,
    render_report,
    summary_rows,
)
from tests.outcome_sample import sample_counters

WHEN = datetime(2026, 3, 1, tzinfo=UTC)


def test_formatting() -> None:
    assert duration_text(None) == "\u2013"
    assert duration_text(1800) == "30 min"
    assert duration_text(5400) == "1.5 h"
    assert duration_text(3 * 86400) == "3.0 d"
    assert bucket_text(0) == "before handoff"
    assert bucket_text(3600) == "≤ 1 h"
    assert bucket_text(None) == "> 180 d"
    assert pct(wilson(1, 8)) == "12.5%"
    assert interval(wilson(0, 0)) == ""
    assert re.fullmatch(r"\d+\.\d\u2013\d+\.\d%", interval(wilson(1, 8)))


def test_the_page_is_self_contained_and_the_json_redoes_it(tmp_path: Path) -> None:
    counters, rules = sample_counters(leads=300)
    kpis = compute_kpis(counters, rules.tiers)
    html_path, json_path = render_report(
        kpis, tmp_path / "r.html", tiers=rules.tiers, generated_at=WHEN
    )
    page = html_path.read_text(encoding="utf-8")
    # nothing fetched when viewed: no external script, stylesheet, font or image
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)
    assert "Plotly.newPlot" in page
    # outside plotly.js itself (whose defaults name a map-data URL, unused here), no URL at all
    assert get_plotlyjs() in page
    assert "http" not in page.replace(get_plotlyjs(), "").replace("http://www.w3.org", "")
    assert "2026-03-01 00:00 UTC" in page
    data = orjson.loads(json_path.read_bytes())
    assert data["schema"] == REPORT_SCHEMA
    assert data["summary"] == summary_rows(kpis)
    assert data["tiers"] == list(rules.tiers)
    again = compute_kpis(data["counters"], data["tiers"])
    assert again == kpis


def test_an_empty_report_says_so(tmp_path: Path) -> None:
    html_path, _ = render_report(compute_kpis({}), tmp_path / "empty.html", generated_at=WHEN)
    assert "No handoffs yet" in html_path.read_text(encoding="utf-8")


@pytest.mark.parametrize("wrapped", [True, False])
def test_cli_report_from_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], wrapped: bool
) -> None:
    counters, rules = sample_counters(leads=200)
    source = tmp_path / "kpis.json"
    payload = {"counters": counters, "tiers": list(rules.tiers)} if wrapped else dict(counters)
    source.write_bytes(orjson.dumps(payload))
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    assert main(["report", "--from-json", str(source), "--out", str(out)]) == 0
    assert out.exists() and out.with_suffix(".json").exists()
    assert str(out) in capsys.readouterr().out
    # the report's own JSON is valid input too
    assert main(["report", "--from-json", str(out.with_suffix(".json")), "--out", str(out)]) == 0


def test_cli_report_rejects_what_is_not_counters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"counters": {"live|v1|handoffs|hot": "many"}}', encoding="utf-8")
    assert main(["report", "--from-json", str(bad)]) == 2
    assert "counter fields to integers" in capsys.readouterr().err
    assert main(["report", "--from-json", str(tmp_path / "missing.json")]) == 2
