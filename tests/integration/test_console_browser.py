"""The console in a real browser (Debian's chromium, Selenium) against a real broker and Redis,
with leads scored by a real `streamscore worker` and the console run as `streamscore console`.

The expectations come from elsewhere than the console's code: the queue's order and a lead's top
reasons from the reference model fed the same events, the simulator's answer from the reference
too, the rules check from the `streamscore rules check` command, the KPIs from compute_kpis of
the counters seeded into Redis, plotly's stylesheet from what plotly.js injects itself.

Set UPDATE_SCREENSHOTS=1 to write the README's screenshots into docs/img/.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from plotly.offline import get_plotlyjs
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from streamscore import dev
from streamscore.config import ENV_PREFIX, Settings, load_settings, settings_env
from streamscore.events.timefmt import format_time_ms
from streamscore.outcomes.kpi import compute_kpis
from streamscore.outcomes.report import summary_rows
from streamscore.scoring import reference
from streamscore.scoring.engine import decide
from streamscore.scoring.explain import describe_lead
from streamscore.scoring.rules import load_rules
from streamscore.store.store import RedisStore
from streamscore.web.console.assets import plotly_css
from tests.browser import chromium
from tests.conftest import REPO_ROOT, RULES_FILE, run_cli
from tests.integration.harness import (
    WorkerProcess,
    event,
    open_test_store,
    produce,
    topic_for,
    wait_for,
)
from tests.lab_synthetic import sample_snapshots, write_lines
from tests.outcome_sample import sample_counters
from tests.scoring_support import FakeEvent

pytestmark = pytest.mark.integration

TOKEN = "console-token-for-the-browser-test"
XSS_ID = '<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2">'
XSS_TITLE = '<svg onload="window.__xss=3">'
XSS_LIVE = "<img src=x onerror=\"window.__xss='live'\">&amp;"
RULES = load_rules(RULES_FILE)
IMG_DIR = REPO_ROOT / "docs" / "img"
#: Collects Content-Security-Policy violations from the first script of every page.
CSP_WATCH = (
    "window.__csp = [];"
    "document.addEventListener('securitypolicyviolation', e => window.__csp.push("
    "[e.violatedDirective, e.blockedURI, e.sourceFile, e.lineNumber]));"
)

# lead -> its events (type, fields), a second apart, in this order
LEADS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "ann": [
        ("identify", {"traits": {"title": "VP Sales", "company_size": 850, "budget": 50000,
                                 "purchase_timeline": "this_quarter",
                                 "email": "ann@northwind.io"}}),
        ("demo_request", {}),
        ("trial_signup", {}),
        ("page_view", {"properties": {"path": "/pricing"}}),
    ],
    "bob": [
        ("identify", {"traits": {"title": "CEO", "company_size": 3000, "industry": "SaaS",
                                 "country": "US", "email": "bob@acme.com", "budget": 20000}}),
        ("demo_request", {}),
    ],
    "cara": [
        ("identify", {"traits": {"title": "Marketing Manager", "company_size": 300,
                                 "email": "cara@gmail.com"}}),
        ("webinar_signup", {}),
        ("email_click", {}),
        ("page_view", {"properties": {"path": "/blog"}}),  # 20 fit + 21: warm, just
    ],
    "dan": [
        ("trial_signup", {}),
        ("webinar_signup", {}),
        *[("page_view", {"properties": {"path": "/blog"}})] * 3,
    ],
    XSS_ID: [
        ("identify", {"traits": {"title": XSS_TITLE, "email": "x@evil.example"}}),
        ("trial_signup", {}),
        ("webinar_signup", {}),
        ("page_view", {"properties": {"path": "/features"}}),
        ("page_view", {"properties": {"path": "/customers"}}),  # 42: between dan and cara
    ],
    "erin": [("page_view", {"properties": {"path": "/blog"}})],
    "fay": [
        ("identify", {"traits": {"title": "Director of Marketing", "company_size": 1200,
                                 "industry": "Software", "country": "DE", "use_case": "routing",
                                 "email": "fay@initech.de"}}),
        *[("page_view", {"properties": {"path": "/pricing"}})] * 2,
        ("webinar_signup", {}),
        ("trial_signup", {}),
    ],
    "gus": [
        *[("email_open", {})] * 3,
        *[("email_click", {})] * 3,
        ("download", {"properties": {"content_type": "whitepaper"}}),
        ("webinar_signup", {}),
    ],
    "hal": [
        ("identify", {"traits": {"title": "Student", "email": "hal@mailinator.com"}}),
        ("trial_signup", {}),
        ("demo_request", {}),
        ("webinar_signup", {}),
    ],
}  # fmt: skip
#: Minutes between a lead's events (the last one is that long before now).
STEP_MS = 20 * 60_000
LIVE_EVENTS: list[tuple[str, dict[str, Any]]] = [
    (
        "identify",
        {
            "traits": {
                "title": "Chief Executive Officer",
                "company_size": 5000,
                "budget": 100000,
                "purchase_timeline": "now",
                "email": "live@bigco.com",
            }
        },
    ),
    ("demo_request", {}),
    ("trial_signup", {}),
]


@dataclass
class Stack:
    """The worker, the console, the store, and every event produced so far (for the reference)."""

    settings: Settings
    store: RedisStore
    worker: WorkerProcess
    console: ConsoleProcess
    lab_dir: Path
    counters: dict[str, int]
    produced: list[tuple[str, str, int, dict[str, Any]]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.settings.console_port}{path}"

    async def send(self, leads: dict[str, list[tuple[str, dict[str, Any]]]]) -> None:
        """Produce each lead's events STEP_MS apart, ending now; remember them."""
        now = int(time.time() * 1000)
        messages = []
        for lead, events in leads.items():
            for i, (event_type, fields) in enumerate(events):
                t = now - (len(events) - i) * STEP_MS
                event_id = f"{uuid.uuid4().hex[:8]}-{i}"
                self.produced.append((lead, event_type, t, fields))
                messages.append(
                    (
                        topic_for(self.settings, event_type),
                        lead.encode(),
                        event(lead, event_type, event_id, t, **fields),
                    )
                )
        await produce(self.settings, messages)

    def reference(self, now: int) -> dict[str, reference.LeadState]:
        """Every lead produced so far, through the reference model, judged at now."""
        refs: dict[str, reference.LeadState] = {}
        for i, (lead, event_type, t, fields) in enumerate(sorted(self.produced, key=_by_time)):
            ev = FakeEvent(
                event_type,
                fields.get("properties", {}),
                fields.get("context", {}),
                fields.get("traits", {}),
            )
            ref = refs.setdefault(lead, reference.LeadState(lead))
            reference.apply_event(ref, RULES, f"e{i}", t, decide(ev, RULES), 0)
        for ref in refs.values():
            reference.advance(ref, RULES, now)
        return refs


def _by_time(item: tuple[str, str, int, dict[str, Any]]) -> int:
    return item[2]


class ConsoleProcess:
    """One `streamscore console` subprocess, stopped by its PID."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.log_path = log_dir / f"console-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(settings_env(settings))
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamscore.cli", "console"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=dev.die_with_parent(os.getpid()),  # noqa: PLW1509 - single-threaded
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def http(
    url: str,
    token: str | None = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A request without redirects: status, headers, the first 64 KiB of the body."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    request = urllib.request.Request(url, data=data, headers=headers or {})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read(65536)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read(65536)


def lab_dir(folder: Path) -> Path:
    """Candidate rules (one valid, one not), two snapshots and outcomes, as the lab writes them."""
    text = RULES_FILE.read_text(encoding="utf-8")
    candidate = text.replace('version: "b2b-2026.11.1"', 'version: "b2b-2026.12.0"').replace(
        "    points: 10\n    cap: {points: 30", "    points: 20\n    cap: {points: 30"
    )
    (folder / "candidate.yaml").write_text(candidate, encoding="utf-8")
    (folder / "broken.yaml").write_text("version: x\ntiers: [1]\n", encoding="utf-8")
    live, cand, outcomes = sample_snapshots(400, 5)
    write_lines(folder / "live.jsonl", live)
    write_lines(folder / "candidate.jsonl", cand)
    write_lines(folder / "outcomes.jsonl", outcomes)
    return folder


@pytest.fixture(scope="module")
async def stack(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    unique = uuid.uuid4().hex[:10]
    topics: dict[str, Any] = {
        name: f"{info.default}-{unique}"
        for name, info in Settings.model_fields.items()
        if name.startswith("topic_") and info.annotation is str
    }
    settings = load_settings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        **topics,
        consumer_group=f"ss-console-{unique}",
        redis_key_prefix=f"sstest:{unique}",
        redis_key_groups=2,
        web_port=dev.free_port(),
        rules_file=RULES_FILE,
        console_port=dev.free_port(),
        console_token=TOKEN,
        console_lab_dir=lab_dir(tmp_path_factory.mktemp("lab")),
        # Long: the live test must see the handoff come through the event stream.
        console_refresh_s=600,
    )
    logs = tmp_path_factory.mktemp("logs")
    store = await open_test_store(settings)
    worker = WorkerProcess(settings, logs, name="console-worker")
    console = ConsoleProcess(settings, logs)
    counters, _ = sample_counters(leads=600, seed=11)
    kpi_key = store.keys.kpi(0)
    flat = [x for name, n in counters.items() for x in (name, n)]
    await store.client.execute("HSET", kpi_key, *flat, key=kpi_key)
    the_stack = Stack(
        settings, store, worker, console, settings.console_lab_dir or logs, dict(counters)
    )
    try:
        await worker.wait_ready()
        await the_stack.send(LEADS)

        async def all_scored() -> bool:
            for lead, events in LEADS.items():
                got = await store.lead_state(lead)
                if got is None or len(got.story or ()) < len(events):
                    return False
            return True

        assert await wait_for(all_scored, 60), worker.log()

        async def console_up() -> bool:
            try:
                status, _, _ = await asyncio.to_thread(http, the_stack.url("/healthz"))
            except OSError:
                return False
            return status == 200

        assert await wait_for(console_up, 60), console.log()
        yield the_stack
    finally:
        assert console.terminate() == 0, console.log()
        assert worker.terminate() == 0, worker.log()
        await store.close()


@pytest.fixture(scope="module")
def browser(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Chromium, logged in to the console, watching for CSP violations on every page."""
    with chromium(tmp_path_factory.mktemp("browser")) as driver:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_WATCH})
        driver.set_window_size(1280, 1400)
        log_in(driver, stack, "/")
        yield driver


def log_in(driver: webdriver.Chrome, stack: Stack, path: str) -> None:
    driver.get(stack.url(path))
    token = driver.find_element(By.ID, "token")
    token.send_keys(TOKEN)
    token.submit()
    WebDriverWait(driver, 10).until(lambda d: "/login" not in d.current_url)


def clean(driver: webdriver.Chrome) -> None:
    """No script of an attacker ran, no alert is open, no CSP violation was reported, nothing
    came from another origin, and no two elements share an id (a chart drawn into the wrong
    element)."""
    assert driver.execute_script("return window.__xss") is None
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - raises when no alert is open
    assert driver.execute_script("return window.__csp") == []
    origin = driver.execute_script("return location.origin")
    fetched = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert [url for url in fetched if not url.startswith(origin + "/")] == []
    ids = driver.execute_script("return [...document.querySelectorAll('[id]')].map(e => e.id)")
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def wait_for_chart(driver: webdriver.Chrome, div_id: str) -> dict[str, Any]:
    """Wait for a chart's SVG; its trace names and counts as plotly drew them."""
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script(
            "const g = document.getElementById(arguments[0]);"
            "return !!(g && g.matches('div.chart') && g._fullLayout"
            " && g.querySelector('svg.main-svg'))",
            div_id,
        )
    )
    info: dict[str, Any] = driver.execute_script(
        """
        const gd = document.getElementById(arguments[0]);
        return {
          names: gd.data.map(t => t.name || ''),
          drawn: gd.querySelectorAll(
            '.scatterlayer .trace, .barlayer .trace, .heatmaplayer .hm').length,
          shapes: gd._fullLayout.shapes.length,
          title: gd._fullLayout.title.text,
        };
        """,
        div_id,
    )
    return info


def queue_rows(driver: webdriver.Chrome) -> dict[str, list[tuple[str, str]]]:
    """tier -> [(lead id from the row's data attribute, score cell)] as the page shows them."""
    rows: dict[str, list[tuple[str, str]]] = driver.execute_script(
        """
        const out = {};
        for (const section of document.querySelectorAll('#queue section[data-tier]')) {
          out[section.dataset.tier] = [...section.querySelectorAll('tr[data-lead-id]')].map(
            r => [r.dataset.leadId, r.querySelector('td[data-col="score"]').textContent]);
        }
        return out;
        """
    )
    return rows


# ---------------------------------------------------------------- access


def test_the_token_is_enforced(stack: Stack, browser: webdriver.Chrome) -> None:
    for path in ("/", "/lead?id=ann", "/kpis", "/models", "/rules"):
        status, headers, _ = http(stack.url(path))
        assert status == 303 and headers["Location"].startswith("/login?next="), path
        assert http(stack.url(path), token=TOKEN)[0] == 200, path
        assert http(stack.url(path), token=TOKEN[:-1])[0] == 303, path
    assert http(stack.url("/events"))[0] == 401
    status, headers, first = http(stack.url("/healthz"))
    assert status == 200 and b"alive" in first
    # A cross-site form post is refused even with a valid session; a script's bearer is not.
    form = urllib.parse.urlencode({"text": "version: x"}).encode()
    assert (
        http(stack.url("/rules/check"), TOKEN, form, {"Origin": "https://evil.example"})[0] == 403
    )
    assert http(stack.url("/rules/check"), TOKEN, form)[0] == 422
    # The browser: logged out, sent to the login form, refused a wrong token, let in by the
    # right one, and taken back where it was going.
    browser.delete_all_cookies()
    browser.get(stack.url("/lead?id=ann"))
    assert "/login?next=" in browser.current_url
    token = browser.find_element(By.ID, "token")
    token.send_keys("not-the-console-token")
    token.submit()
    error = WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "login-error"))
    assert "not the console's" in error[0].text
    assert browser.get_cookie("ss_console") is None
    token = browser.find_element(By.ID, "token")
    token.send_keys(TOKEN)
    token.submit()
    WebDriverWait(browser, 10).until(lambda d: d.current_url == stack.url("/lead?id=ann"))
    cookie = browser.get_cookie("ss_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: scripts cannot


def test_every_page_has_the_security_headers(stack: Stack) -> None:
    for path in ("/", "/login", "/lead?id=nobody", "/static/missing.js"):
        _, headers, _ = http(stack.url(path), token=TOKEN)
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
    status, headers, body = http(stack.url("/lead?id=nobody"), token=TOKEN)
    assert status == 404 and headers["Cache-Control"] == "no-store" and b"nobody" in body


# ---------------------------------------------------------------- queue


def test_the_queue_lists_each_tier_by_score_as_the_reference_does(
    stack: Stack, browser: webdriver.Chrome
) -> None:
    browser.get(stack.url("/"))
    shown = queue_rows(browser)
    refs = stack.reference(int(time.time() * 1000))
    for tier in ("hot", "warm"):
        expected = sorted(
            (
                (lead, reference.score_at(ref, RULES, int(time.time() * 1000)))
                for lead, ref in refs.items()
                if RULES.tiers[ref.tier].name == tier
            ),
            key=lambda kv: (-round(kv[1], 1), kv[0]),  # as the page: tenths, then the id
        )
        assert [lead for lead, _ in shown[tier]] == [lead for lead, _ in expected], tier
        for (_, text), (_, score) in zip(shown[tier], expected, strict=True):
            assert abs(float(text) - score) < 0.06
    assert {lead for rows in shown.values() for lead, _ in rows} == set(LEADS) - {"erin"}
    hot = {
        r.get_attribute("data-lead-id"): r
        for r in browser.find_elements(By.CSS_SELECTOR, "section[data-tier=hot] tr[data-lead-id]")
    }
    assert hot["ann"].find_element(By.CSS_SELECTOR, "[data-col=account]").text == "northwind.io"
    assert hot["ann"].find_element(By.CSS_SELECTOR, "[data-col=grade]").text == "B"
    assert hot["ann"].find_element(By.CSS_SELECTOR, "[data-col=status]").text == "handed off"
    clean(browser)
    shot(browser, "console-queue.png")


def test_a_lead_id_that_is_html_is_shown_as_text_everywhere(
    stack: Stack, browser: webdriver.Chrome
) -> None:
    browser.get(stack.url("/"))
    links = [
        a for a in browser.find_elements(By.CSS_SELECTOR, "#queue td.lead a") if a.text == XSS_ID
    ]
    assert len(links) == 1, "the id is the link's text, not markup"
    href = str(links[0].get_attribute("href"))
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(href).query)["id"] == [XSS_ID]
    clean(browser)
    links[0].click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "lead-id"))
    assert browser.find_element(By.ID, "lead-id").text == XSS_ID
    assert browser.title.startswith(f"Lead {XSS_ID}")
    values = [
        td.text for td in browser.find_elements(By.CSS_SELECTOR, "#attributes [data-col=value]")
    ]
    assert XSS_TITLE.lower() in values
    wait_for_chart(browser, "chart-score")
    clean(browser)


@pytest.mark.timeout(240)
async def test_a_handoff_appears_live_without_a_reload(
    stack: Stack, browser: webdriver.Chrome
) -> None:
    browser.get(stack.url("/"))
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "live-status").text == "(live)"
    )
    browser.execute_script("window.__same_page = true")
    await asyncio.sleep(2)  # the console's consumer has its partitions and the end offsets
    await stack.send({XSS_LIVE: LIVE_EVENTS})

    def announced(d: webdriver.Chrome) -> bool:
        notices = d.execute_script(
            "return [...document.querySelectorAll('#notices .notice')].map(n => n.dataset.leadId)"
        )
        return XSS_LIVE in notices and XSS_LIVE in [lead for lead, _ in queue_rows(d)["hot"]]

    await asyncio.to_thread(WebDriverWait(browser, 90, poll_frequency=0.5).until, announced)
    assert browser.execute_script("return window.__same_page") is True, "the page was reloaded"
    notice = browser.find_element(By.CSS_SELECTOR, "#notices .notice")
    assert notice.text.startswith(f"Handed off just now: {XSS_LIVE} (hot, score ")
    clean(browser)


# ---------------------------------------------------------------- lead


def test_a_lead_page_shows_its_chart_contributions_and_story(
    stack: Stack, browser: webdriver.Chrome
) -> None:
    browser.get(stack.url("/lead?id=ann"))
    chart = wait_for_chart(browser, "chart-score")
    assert chart["names"] == ["score", "score since (decay)", "engagement", "fit"]
    assert chart["drawn"] == 4
    assert chart["shapes"] == 4  # warm and hot, each entered at one score and left below another
    assert chart["title"] == "Score over time"
    rows = [
        (
            tr.get_attribute("data-rule"),
            float(tr.find_element(By.CSS_SELECTOR, "[data-col=points]").text),
        )
        for tr in browser.find_elements(By.CSS_SELECTOR, "#contributions tr[data-rule]")
    ]
    now = int(time.time() * 1000)
    ref = stack.reference(now)["ann"]
    # The top rules are the reference's reasons; every row is the stored state judged now.
    top = reference.reasons_at(ref, RULES, now)
    assert [r for r, _ in rows[: len(top)]] == [r for r, _ in top]
    for (_, shown), (_, points) in zip(rows, top, strict=False):
        assert abs(shown - points) < 0.06
    events = [
        tr.find_elements(By.TAG_NAME, "td")[1].text
        for tr in browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")
    ]
    assert events == [t for t, _ in reversed(LEADS["ann"])]
    moments = [
        tr.get_attribute("data-kind")
        for tr in browser.find_elements(By.CSS_SELECTOR, "#moments tr[data-kind]")
    ]
    assert "handoff" in moments and "tier" in moments
    figures = {
        dd.get_attribute("data-field"): dd.text
        for dd in browser.find_elements(By.CSS_SELECTOR, "#figures dd")
    }
    assert figures["tier"] == "hot" and figures["grade"] == "B"
    assert figures["account"] == "northwind.io"
    assert abs(float(figures["score"]) - reference.score_at(ref, RULES, now)) < 0.06
    bant = [tr.text for tr in browser.find_elements(By.CSS_SELECTOR, "#bant tbody tr")]
    assert bant == ["budget yes", "authority yes", "need no", "timeline yes"]
    clean(browser)
    shot(browser, "console-lead.png")


async def test_the_contributions_are_the_stored_state_judged_now(
    stack: Stack, browser: webdriver.Chrome
) -> None:
    state = await stack.store.lead_state("bob")
    assert state is not None
    browser.get(stack.url("/lead?id=bob"))
    shown = {
        tr.get_attribute("data-rule"): tr.find_element(By.CSS_SELECTOR, "[data-col=points]").text
        for tr in browser.find_elements(By.CSS_SELECTOR, "#contributions tr[data-rule]")
    }
    info = describe_lead(state, RULES, int(time.time() * 1000))
    assert shown == {c["rule"]: f"{c['points']:+.1f}" for c in info["contributions"]}
    assert set(shown) == {
        "demo_request",
        "title_executive",
        "company_enterprise",
        "target_industry",
        "core_market_country",
        "budget_confirmed",
    }


# ---------------------------------------------------------------- KPIs, models, rules


async def test_the_kpi_page_shows_the_stored_counters(
    stack: Stack, browser: webdriver.Chrome
) -> None:
    # The seeded counters, plus what the worker counted for the test's own handoffs.
    counters = await stack.store.kpi_counters()
    assert all(counters.get(name, 0) >= n for name, n in stack.counters.items())
    kpis = compute_kpis(counters, [t.name for t in RULES.tiers])
    browser.get(stack.url("/kpis"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#summary tbody tr")
    expected = summary_rows(kpis)
    assert len(rows) == len(expected) == 2  # two rules versions
    for row, want in zip(rows, expected, strict=True):
        cells = {
            td.get_attribute("data-col"): td.text.split("\n")[0]
            for td in row.find_elements(By.TAG_NAME, "td")
        }
        for column in ("model", "rules version", "handoffs", "won", "SLA met"):
            assert cells[column] == want[column], column
    for index in range(len(expected)):
        for suffix in ("bands", "gains", "tiers", "sla", "touch", "reasons"):
            info = wait_for_chart(browser, f"chart-c{index}-{suffix}")
            assert info["drawn"] == len(info["names"]) >= 1, (suffix, info)
    clean(browser)


def test_the_models_page_lists_candidates_and_draws_the_labs_diff(
    stack: Stack, browser: webdriver.Chrome
) -> None:
    browser.get(stack.url("/models"))
    candidates = {
        tr.get_attribute("data-candidate"): tr.text
        for tr in browser.find_elements(By.CSS_SELECTOR, "#candidates tr[data-candidate]")
    }
    assert "points: pricing_page 10 -> 20" in candidates["candidate.yaml"]
    assert "broken.yaml: line 1: decay: Field required" in candidates["broken.yaml"]
    Select(browser.find_element(By.NAME, "outcomes")).select_by_visible_text("outcomes.jsonl")
    browser.find_element(By.CSS_SELECTOR, "#diff-form button").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "diff"))
    assert "candidate=candidate.jsonl" in browser.current_url
    for div_id in ("transitions", "scores", "precision", "tiers", "gains-opportunity", "gains-won"):
        info = wait_for_chart(browser, f"chart-{div_id}")
        assert info["drawn"] >= 1, (div_id, info)
    appeared = browser.find_elements(By.CSS_SELECTOR, "#appeared tbody tr")
    assert appeared and "pricing_page +" in appeared[0].text
    clean(browser)


async def test_the_simulator_answers_as_the_reference_and_writes_nothing(
    stack: Stack, browser: webdriver.Chrome
) -> None:
    key = stack.store.keys.lead(stack.store.keys.lead_ref("cara"))
    before = await stack.store.client.execute("GET", key, key=key)
    browser.get(stack.url("/models"))
    browser.find_element(By.ID, "sim-lead").send_keys("cara")
    Select(browser.find_element(By.ID, "sim-type")).select_by_visible_text("demo_request")
    browser.find_element(By.CSS_SELECTOR, "#simulate-pick button").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "sim-result"))
    result = {
        tr.get_attribute("data-field"): (
            tr.find_element(By.CSS_SELECTOR, "[data-col=before]").text,
            tr.find_element(By.CSS_SELECTOR, "[data-col=after]").text,
        )
        for tr in browser.find_elements(
            By.CSS_SELECTOR, "#sim-result tr[data-field=score], #sim-result tr[data-field=tier]"
        )
    }
    now = int(time.time() * 1000)
    ref = stack.reference(now)["cara"]
    score_before = reference.score_at(ref, RULES, now)
    reference.apply_event(
        ref, RULES, "sim", now, decide(FakeEvent("demo_request", {}, {}, {}), RULES), 0
    )
    score_after = reference.score_at(ref, RULES, now)
    assert abs(float(result["score"][0]) - score_before) < 0.06
    assert abs(float(result["score"][1]) - score_after) < 0.06
    assert result["tier"] == ("warm", RULES.tiers[ref.tier].name)
    assert score_after - score_before == pytest.approx(30, abs=0.06)
    outputs = [
        li.get_attribute("data-kind")
        for li in browser.find_elements(By.CSS_SELECTOR, "#sim-outputs li")
    ]
    assert outputs == ["none"]  # warm stays warm; no handoff
    # A pasted Segment message, for a lead id that is markup.
    message = json.dumps(
        {
            "messageId": "m-1",
            "type": "track",
            "event": "Trial Started",
            "userId": XSS_ID,
            "timestamp": format_time_ms(now),
        }
    )
    browser.find_element(By.ID, "sim-event").send_keys(message)
    browser.find_element(By.CSS_SELECTOR, "#simulate-paste button").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "sim-lead-id"))
    assert browser.find_element(By.ID, "sim-lead-id").text == XSS_ID
    after = browser.find_element(
        By.CSS_SELECTOR, "#sim-result tr[data-field=score] [data-col=after]"
    )
    before_xss = browser.find_element(
        By.CSS_SELECTOR, "#sim-result tr[data-field=score] [data-col=before]"
    )
    assert float(after.text) - float(before_xss.text) == pytest.approx(25, abs=0.11)
    # A message the worker would dead-letter: its reason, and nothing simulated.
    field = browser.find_element(By.ID, "sim-event")
    field.clear()
    field.send_keys('{"event_id": "x", "lead_id": "cara", "type": "teleport", "time": 1}')
    browser.find_element(By.CSS_SELECTOR, "#simulate-paste button").click()
    error = WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "simulation-error"))
    assert "(unknown_type)" in error[0].text
    assert await stack.store.client.execute("GET", key, key=key) == before, "state was written"
    clean(browser)


def test_a_candidate_is_checked_with_the_lines_of_rules_check(
    stack: Stack, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    broken = RULES_FILE.read_text(encoding="utf-8").replace(
        "    points: 8\n    cap: {points: 24", "    points: eight\n    cap: {points: 24"
    )
    broken = broken.replace("  - id: pricing_page\n", "  - id: Pricing Page\n")
    (tmp_path / "candidate.yaml").write_text(broken, encoding="utf-8")
    cli = run_cli("rules", "check", "candidate.yaml", cwd=tmp_path)
    assert cli.returncode == 1
    expected = cli.stderr.strip().splitlines()
    assert len(expected) >= 2
    browser.get(stack.url("/rules"))
    assert browser.find_element(By.ID, "live-version").text == RULES.version
    browser.execute_script("document.getElementById('check-text').value = arguments[0]", broken)
    browser.find_element(By.CSS_SELECTOR, "#check-form button").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "check-result"))
    shown = [p.text for p in browser.find_elements(By.CSS_SELECTOR, "#check-result pre.line")]
    assert shown == expected
    browser.execute_script(
        "document.getElementById('check-text').value = arguments[0]",
        RULES_FILE.read_text(encoding="utf-8"),
    )
    browser.find_element(By.CSS_SELECTOR, "#check-form button").click()
    WebDriverWait(browser, 30).until(
        lambda d: "OK (version" in d.find_element(By.ID, "check-result").text
    )
    (tmp_path / "candidate.yaml").write_text(RULES_FILE.read_text(encoding="utf-8"))
    ok = run_cli("rules", "check", "candidate.yaml", cwd=tmp_path)
    assert browser.find_element(By.ID, "check-result").text == ok.stdout.strip()
    clean(browser)


def test_plotlys_stylesheet_is_the_one_plotly_injects(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """Drawn without a CSP, plotly.js injects its rules; the console's file holds the same."""
    bundle = get_plotlyjs()
    injected_page = tmp_path / "injected.html"
    injected_page.write_text(
        f"<!DOCTYPE html><html><head><script>{bundle}</script></head><body><div id=g></div>"
        "<script>Plotly.newPlot('g', [{y: [1, 2]}]);</script></body></html>",
        encoding="utf-8",
    )
    served_page = tmp_path / "served.html"
    served_page.write_text(
        f"<!DOCTYPE html><html><head><style>{plotly_css(bundle)}</style></head></html>",
        encoding="utf-8",
    )
    rules_js = "return [...arguments[0].sheet.cssRules].map(r => r.cssText)"
    browser.get(injected_page.as_uri())
    injected = browser.execute_script(
        rules_js.replace("arguments[0]", "document.getElementById('plotly.js-style-global')")
    )
    browser.get(served_page.as_uri())
    served = browser.execute_script(
        rules_js.replace("arguments[0]", "document.querySelector('style')")
    )
    assert len(injected) > 40
    assert sorted(served) == sorted(injected)


def shot(driver: webdriver.Chrome, name: str) -> None:
    """A screenshot of the page; into docs/img when UPDATE_SCREENSHOTS=1."""
    folder = (
        IMG_DIR
        if os.environ.get("UPDATE_SCREENSHOTS") == "1"
        else Path(os.environ.get("TMPDIR", "/tmp"))
    )
    path = folder / name
    assert driver.save_screenshot(str(path)), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 40_000  # a page, not a blank
