"""The lab's pages (diff and learn) in a real headless browser (Debian's chromium): every chart
draws its SVG with the expected traces and title, the tables hold the figures, nothing is
fetched from the network."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from streamscore.lab.diff import LeadOutcome, LeadSnapshot, Snapshot, diff_snapshots
from streamscore.lab.learn import learn
from streamscore.lab.report import render_diff_html, render_learn_html
from streamscore.scoring.rules import parse_rules_text
from tests.browser import chromium, wait_for_charts
from tests.lab_synthetic import RULES_YAML, sample_snapshots, synthetic_examples

pytestmark = pytest.mark.integration

WHEN = datetime(2026, 11, 20, tzinfo=UTC)
# chart id -> (trace name prefixes, title prefix, CSS selector of the drawn traces)
DIFF_CHARTS: dict[str, tuple[list[str], str, str]] = {
    "transitions": ([""], "Tier transitions", ".heatmaplayer .hm"),
    "scores": (["live (mean ", "candidate (mean "], "Score distribution", ".barlayer .trace"),
    "precision": (["live", "candidate"], "Handoffs against outcomes", ".barlayer .trace"),
    "tiers": (["live", "candidate"], "Opportunity rate by tier", ".barlayer .trace"),
    "gains-opportunity": (
        ["live", "candidate", "random order"], "Cumulative gains: opportunity",
        ".scatterlayer .trace",
    ),
    "gains-won": (
        ["live", "candidate", "random order"], "Cumulative gains: won", ".scatterlayer .trace"
    ),
}  # fmt: skip
LEARN_CHARTS: dict[str, tuple[list[str], str, str]] = {
    "gains": (
        ["learned model", "exported points", "current rules", "random order"],
        "Cumulative gains: opportunity (held out)",
        ".scatterlayer .trace",
    ),
    "calibration": (
        ["learned model", "perfect calibration"],
        "Calibration",
        ".scatterlayer .trace",
    ),
}


def snapshot(rows: list[dict[str, Any]]) -> Snapshot:
    header, *leads = rows
    return Snapshot(
        str(header["model"]),
        str(header["rules_version"]),
        tuple(header["tiers"]),
        {
            r["lead_id"]: LeadSnapshot(
                r["lead_id"],
                r["tier"],
                r["score"],
                r["handed_off"],
                tuple((a, b) for a, b in r["reasons"]),
                r["points"],
            )
            for r in leads
        },
    )


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lab-pages")
    live, candidate, outcome_rows = sample_snapshots(2000, 7)
    outcomes: dict[str, LeadOutcome] = {}
    for row in outcome_rows:
        was = outcomes.get(str(row["lead_id"]), LeadOutcome(False, False))
        outcomes[str(row["lead_id"])] = LeadOutcome(
            was.opportunity or row["type"] in ("opportunity_created", "won"),
            was.won or row["type"] == "won",
        )
    diff = diff_snapshots(snapshot(live), snapshot(candidate), outcomes)
    (folder / "diff.html").write_text(render_diff_html(diff, WHEN), encoding="utf-8")
    result = learn(synthetic_examples(2000, 7), parse_rules_text(RULES_YAML, "r.yaml"))
    (folder / "learn.html").write_text(
        render_learn_html(result, "synth-learned", WHEN), encoding="utf-8"
    )
    return {"diff": folder / "diff.html", "learn": folder / "learn.html"}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path_factory.mktemp("browser")) as driver:
        yield driver


def chart_info(driver: webdriver.Chrome, div_id: str, traces: str) -> dict[str, Any]:
    info: dict[str, Any] = driver.execute_script(
        """
        const gd = document.getElementById(arguments[0]);
        return {
          names: gd.data.map(t => t.name || ''),
          title: gd._fullLayout.title.text,
          traces: gd.querySelectorAll(arguments[1]).length,
          cells: gd.querySelectorAll('.heatmap-label').length,
          xtitle: gd._fullLayout.xaxis.title.text,
          ytitle: gd._fullLayout.yaxis.title.text,
        };
        """,
        div_id,
        traces,
    )
    return info


@pytest.mark.parametrize(("page", "charts"), [("diff", DIFF_CHARTS), ("learn", LEARN_CHARTS)])
def test_every_chart_renders(
    browser: webdriver.Chrome,
    pages: dict[str, Path],
    page: str,
    charts: dict[str, tuple[list[str], str, str]],
) -> None:
    browser.get(pages[page].resolve().as_uri())
    wait_for_charts(browser, len(charts))
    for div_id, (names, title, traces) in charts.items():
        info = chart_info(browser, div_id, traces)
        assert len(info["names"]) == len(names), (div_id, info)
        assert all(n.startswith(p) for n, p in zip(info["names"], names, strict=True)), info
        assert info["title"].startswith(title), info["title"]
        assert info["traces"] == len(names), (div_id, info)
        assert info["xtitle"] and info["ytitle"]
    if page == "diff":  # one count per cell of the 3 x 3 transition matrix
        assert chart_info(browser, "transitions", ".hm")["cells"] == 9
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert [url for url in fetched if not url.startswith(("file:", "data:"))] == []


def test_tables_hold_the_figures(browser: webdriver.Chrome, pages: dict[str, Path]) -> None:
    browser.get(pages["diff"].resolve().as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#summary tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == ["2,000", "2,000"]
    appeared = browser.find_elements(By.CSS_SELECTOR, "#appeared tbody tr")
    assert 0 < len(appeared) <= 50
    assert "pricing_page +" in appeared[0].text
    browser.get(pages["learn"].resolve().as_uri())
    weights = browser.find_elements(By.CSS_SELECTOR, "#weights tbody tr")
    assert [w.find_elements(By.TAG_NAME, "td")[0].text for w in weights][:3] == [
        "page_view",
        "pricing_page",
        "email_click",
    ]
