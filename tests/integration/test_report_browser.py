"""The outcomes report in a real headless browser (Debian's chromium): every chart draws its SVG
with the expected traces and title, the summary table shows the right figures, nothing is
fetched from the network, and a screenshot can be taken."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from streamscore.outcomes.kpi import Kpis
from streamscore.outcomes.report import ordered, pct, render_report
from tests.browser import chromium, wait_for_charts
from tests.outcome_sample import sample_kpis

pytestmark = pytest.mark.integration

LEADS = 800
# chart id suffix -> (trace names, title prefix, SVG layer holding the traces)
CHARTS: dict[str, tuple[list[str], str, str]] = {
    "bands": (["opportunity", "won"], "Conversion by score at handoff", "barlayer"),
    "gains": (
        ["won deals", "opportunities", "random order"],
        "Cumulative gains",
        "scatterlayer",
    ),
    "tiers": (
        ["accepted by sales", "opportunity", "won"],
        "Conversion by tier at handoff",
        "barlayer",
    ),
    "sla": (["met", "missed", "open"], "First-touch SLA: ", "barlayer"),
    "touch": (["handoffs"], "Time to first touch: median ", "barlayer"),
    "reasons": (["rejected"], "Rejected by sales: ", "barlayer"),
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Kpis]:
    kpis, rules = sample_kpis(leads=LEADS)
    page = tmp_path_factory.mktemp("report") / "report.html"
    render_report(kpis, page, tiers=rules.tiers, generated_at=datetime(2026, 3, 1, tzinfo=UTC))
    return page, kpis


@pytest.fixture(scope="module")
def browser(
    report: tuple[Path, Kpis], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path_factory.mktemp("browser")) as driver:
        driver.get(report[0].resolve().as_uri())
        wait_for_charts(driver, len(CHARTS) * len(report[1].cohorts))
        yield driver


def chart_info(driver: webdriver.Chrome, div_id: str, layer: str) -> dict[str, Any]:
    info: dict[str, Any] = driver.execute_script(
        """
        const gd = document.getElementById(arguments[0]);
        return {
          names: gd.data.map(t => t.name),
          title: gd._fullLayout.title.text,
          svgs: gd.querySelectorAll('svg.main-svg').length,
          traces: gd.querySelectorAll('.' + arguments[1] + ' .trace').length,
          xtitle: gd._fullLayout.xaxis.title.text,
          ytitle: gd._fullLayout.yaxis.title.text,
          what: gd.closest('section').querySelector('p.what').textContent,
        };
        """,
        div_id,
        layer,
    )
    return info


def test_every_chart_renders_its_traces_and_titles(
    browser: webdriver.Chrome, report: tuple[Path, Kpis]
) -> None:
    kpis = report[1]
    assert len(kpis.cohorts) == 2
    for index, _ in enumerate(ordered(kpis)):
        for suffix, (names, title, layer) in CHARTS.items():
            info = chart_info(browser, f"c{index}-{suffix}", layer)
            assert info["names"] == names, suffix
            assert info["title"].startswith(title), info["title"]
            assert info["svgs"] >= 1
            assert info["traces"] == len(names), (suffix, info)
            assert info["xtitle"] and info["ytitle"]
            assert len(info["what"]) > 40  # the "what this shows" line


def test_band_chart_draws_one_bar_per_band(
    browser: webdriver.Chrome, report: tuple[Path, Kpis]
) -> None:
    cohort = ordered(report[1])[0]
    bars = browser.execute_script(
        "return document.getElementById('c0-bands').querySelectorAll('.barlayer .trace')[1]"
        ".querySelectorAll('.point').length"
    )
    assert bars == len(cohort.by_band)
    assert cohort.bands_are_deciles and 5 <= len(cohort.by_band) <= 10


def test_summary_table_shows_the_figures(
    browser: webdriver.Chrome, report: tuple[Path, Kpis]
) -> None:
    rows = browser.find_elements(By.CSS_SELECTOR, "#summary tbody tr")
    cohorts = ordered(report[1])
    assert len(rows) == len(cohorts)
    for row, cohort in zip(rows, cohorts, strict=True):
        cells = {
            td.get_attribute("data-col"): td.text.split("\n")[0]
            for td in row.find_elements(By.TAG_NAME, "td")
        }
        t = cohort.total
        assert cells["rules version"] == cohort.rules_version
        assert int(cells["handoffs"].replace(",", "")) == t.handoffs
        assert cells["won"] == f"{100 * t.won.k / t.handoffs:.1f}%"
        assert cells["to opportunity"] == f"{100 * t.opportunity.k / t.handoffs:.1f}%"
        assert cells["SLA met"] == pct(t.sla.attainment)
    # the sample splits its leads 3:1 between the two rules versions
    assert sum(c.total.handoffs for c in cohorts) == LEADS


def test_nothing_is_fetched_from_the_network(browser: webdriver.Chrome) -> None:
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert [url for url in fetched if not url.startswith(("file:", "data:"))] == []


def test_screenshot(browser: webdriver.Chrome, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 50_000  # charts, not a blank page
