"""Sales outcomes joined to handoffs by a real worker: attribution, KPIs, SLA breaches, recycling.

Each test drives a real `streamscore worker` with events and outcomes on a real broker and
Redis, and reads what the worker committed: the lead's funnel and story, the KPI counters, the
SLA-breach topic, and the handoffs.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamscore.config import Settings, settings_env
from streamscore.outcomes.funnel import from_wire
from streamscore.outcomes.kpi import compute_kpis, field, global_field
from streamscore.scoring.rules import load_rules
from streamscore.scoring.story import items
from streamscore.store.store import RedisStore
from tests.conftest import REPO_ROOT, run_cli
from tests.integration.harness import (
    WorkerProcess,
    bounded,
    event,
    metric_total,
    produce,
    read_topic,
    topic_for,
    wait_for,
)

RULES_FILE = REPO_ROOT / "examples" / "rules.yaml"
BUYER = {"title": "Chief Revenue Officer", "company_size": 5000, "budget": 90000,
         "purchase_timeline": "now", "industry": "saas"}  # fmt: skip
MIN_MS = 60_000


def rules_with(tmp_path: Path, outcomes: str) -> Path:
    """The example rules with another `outcomes:` section (at the end of the file)."""
    text = RULES_FILE.read_text(encoding="utf-8")
    head = text[: text.index("\noutcomes:")]
    path = tmp_path / "rules.yaml"
    path.write_text(f"{head}\noutcomes:\n{outcomes}", encoding="utf-8")
    return path


def hot_lead(lead: str, t0: int) -> list[tuple[str, bytes]]:
    """(event type, message) of a buyer handed off at t0 + 2 min (the demo request)."""
    steps: list[tuple[str, dict[str, Any]]] = [
        ("identify", {"traits": BUYER}),
        ("page_view", {"properties": {"path": "/pricing"}}),
        ("demo_request", {}),
        ("trial_signup", {}),
        ("email_click", {}),
    ]
    return [
        (etype, event(lead, etype, f"{lead}-e{i}", t0 + i * MIN_MS, **extra))
        for i, (etype, extra) in enumerate(steps)
    ]


def outcome(lead: str, oid: str, kind: str, time_ms: int, **extra: Any) -> bytes:
    return orjson.dumps(
        {"outcome_id": oid, "lead_id": lead, "type": kind, "time": time_ms, **extra}
    )


async def send(settings: Settings, events: list[tuple[str, bytes]], outcomes: list[bytes]) -> None:
    messages = [(topic_for(settings, t), None, raw) for t, raw in events]
    messages += [(settings.topic_outcomes, None, raw) for raw in outcomes]
    await produce(settings, messages)


async def counters(store: RedisStore) -> dict[str, int]:
    return {k: v for k, v in (await store.kpi_counters()).items() if v}


@bounded(150)
async def test_outcomes_join_their_handoff_once_in_any_order(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    rules_path = rules_with(tmp_path, "  attribution_window: 30d\n")
    rules = load_rules(rules_path)
    settings = settings_factory(
        rules_file=rules_path, decay_tick_s=3600, kpi_refresh_s=0.5, web_token="kpi-token"
    )
    now = int(time.time() * 1000)
    t0 = now - 3 * 3_600_000
    handoff_ms = t0 + 2 * MIN_MS  # the demo request that makes the buyer hot
    events = hot_lead("ann", t0) + hot_lead("bob", t0)
    outcomes = [
        # ann: touched, then won BEFORE the opportunity is known; the same touch twice.
        outcome("ann", "a1", "first_touch", handoff_ms + 10 * MIN_MS, channel="call"),
        outcome("ann", "a3", "won", handoff_ms + 50 * MIN_MS, amount=48000),
        outcome("ann", "a2", "opportunity_created", handoff_ms + 30 * MIN_MS, amount=40000),
        outcome("ann", "a1", "first_touch", handoff_ms + 10 * MIN_MS, channel="call"),
        # bob: a rep called him BEFORE he turned hot (sales first), then rejected him.
        outcome("bob", "b1", "first_touch", t0 - 5 * MIN_MS, channel="email"),
        outcome("bob", "b2", "sales_rejected", handoff_ms + 20 * MIN_MS, reason="no budget"),
        # carol: never scored, an outcome arrives all the same; she turns hot later.
        outcome("carol", "c1", "first_touch", t0 + 60 * MIN_MS, channel="meeting"),
    ]
    # The outcomes are produced first: they wait for their handoff, wherever they land.
    await send(settings, [], outcomes)
    worker = WorkerProcess(settings, tmp_path, name="outcomes")
    workers.append(worker)
    await worker.wait_ready()

    async def unattributed_carol() -> bool:
        return (await counters(store)).get(global_field("unattributed", "first_touch"), 0) >= 1

    assert await wait_for(unattributed_carol, 60), worker.log()
    await send(settings, events + hot_lead("carol", t0 + 50 * MIN_MS), [])

    version = rules.version
    handoffs = field("live", version, "handoffs", "hot")

    async def settled() -> dict[str, int] | None:
        got = await counters(store)
        return (
            got
            if got.get(handoffs) == 3 and not got.get(global_field("unattributed", "first_touch"))
            else None
        )

    got = await wait_for(settled, 60)
    assert got, (await counters(store), worker.log())
    assert got[field("live", version, "stage", "hot", "touched")] == 3
    assert got[field("live", version, "stage", "hot", "opportunity")] == 1
    assert got[field("live", version, "stage", "hot", "won")] == 1
    assert got[field("live", version, "stage", "hot", "rejected")] == 1
    assert got[field("live", version, "sales_first", "hot")] == 1  # bob's early call
    assert got[global_field("duplicates")] == 1  # ann's touch, sent twice
    kpis = compute_kpis(got, [t.name for t in rules.tiers])
    (cohort,) = kpis.cohorts
    assert (cohort.model, cohort.rules_version) == ("live", version)
    assert cohort.total.won.k == 1 and cohort.total.won.n == 3
    assert cohort.rejection_reasons == (("no_budget", 1),)

    ann = await store.lead_state("ann")
    assert ann is not None and ann.funnel
    funnel = from_wire(ann.funnel)
    assert [o.outcome_id for o in funnel.outcomes] == ["a1", "a2", "a3"]  # by CRM time
    assert [i.kind for i in items(ann)].count("outcome") == 3
    _, body = worker.get("/metrics")
    text = body.decode()
    assert metric_total(text, "streamscore_outcomes_total", result="duplicate") == 1
    assert metric_total(text, "streamscore_outcomes_total", result="applied") == 6

    # The same figures through every way in: the gauges, /kpis, `streamscore kpis`, the report.
    async def gauged() -> bool:
        _, body = worker.get("/metrics")
        return metric_total(body.decode(), "streamscore_kpi_handoffs", tier="hot") == 3

    assert await wait_for(gauged, 10), worker.log()
    _, body = worker.get("/metrics")
    won = metric_total(body.decode(), "streamscore_kpi_conversion_ratio", tier="hot", stage="won")
    assert won == pytest.approx(1 / 3)
    assert worker.get("/kpis")[0] == 401  # lead data: behind the token
    answer = await asyncio.to_thread(bearer_get, worker.url("/kpis"), "kpi-token")
    assert orjson.loads(answer)["counters"] == await store.kpi_counters()
    env = settings_env(settings)
    printed = run_cli("kpis", env=env)
    assert printed.returncode == 0, printed.stderr
    assert "model live, rules " + version in printed.stdout
    assert "hot" in printed.stdout and "unattributed: 0, duplicates: 1" in printed.stdout
    written = run_cli("report", "--out", str(tmp_path / "report.html"), env=env)
    assert written.returncode == 0, written.stderr
    figures = orjson.loads((tmp_path / "report.json").read_bytes())
    assert figures["counters"] == await store.kpi_counters()
    assert worker.terminate() == 0, worker.log()


@bounded(150)
async def test_a_missed_first_touch_deadline_breaches_once_without_any_new_input(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    rules_path = rules_with(tmp_path, "  sla: {hot: 20s}\n")
    settings = settings_factory(rules_file=rules_path, decay_tick_s=0.5)
    worker = WorkerProcess(settings, tmp_path, name="sla")
    workers.append(worker)
    await worker.wait_ready()
    now = int(time.time() * 1000)
    # erin's call is known before her handoff (live, a touch that arrives after the clock has
    # passed the deadline still counts as met, but the breach is already out: see the rules).
    erin_t0 = now - 5 * MIN_MS
    # 5 s after her handoff (the demo request, t0 + 2 min), 15 s before the deadline.
    call = outcome("erin", "e1", "first_touch", erin_t0 + 2 * MIN_MS + 5000, channel="call")
    await send(settings, [], [call])

    async def call_known() -> bool:
        return (await counters(store)).get(global_field("unattributed", "first_touch")) == 1

    assert await wait_for(call_known, 60), worker.log()
    # dave is handed off about now, erin a minute ago; nothing else arrives afterwards.
    await send(
        settings, hot_lead("dave", now - 4 * MIN_MS - 2000) + hot_lead("erin", now - 5 * MIN_MS), []
    )

    async def breaches() -> list[dict[str, Any]]:
        return await read_topic(settings, settings.topic_sla_breaches, timeout_s=2)

    async def dave_breached() -> list[dict[str, Any]]:
        found = await breaches()
        return found if any(b["lead_id"] == "dave" for b in found) else []

    # Nothing else arrives: the tick's clock (now, once caught up) passes dave's deadline.
    found = await wait_for(dave_breached, 60, interval_s=1)
    assert [b["lead_id"] for b in found] == ["dave"], found
    await wait_for(lambda: _sleep_then_true(3), 5)  # more ticks: still one breach
    assert [b["lead_id"] for b in await breaches()] == ["dave"]
    (breach,) = found
    assert breach["tier"] == "hot" and breach["schema"] == "streamscore.sla_breach.v1"
    version = load_rules(rules_path).version
    got = await counters(store)
    assert got[field("live", version, "sla_breaches", "hot")] == 1
    assert got[field("live", version, "sla_met", "hot")] == 1  # erin
    _, body = worker.get("/metrics")
    assert metric_total(body.decode(), "streamscore_sla_breaches_total", tier="hot") == 1
    assert worker.terminate() == 0, worker.log()


async def _sleep_then_true(seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return True


def bearer_get(url: str, token: str) -> bytes:
    request = urllib.request.Request(url)
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as resp:
        body: bytes = resp.read()
    return body


@bounded(150)
@pytest.mark.parametrize("action", ["disarm", "subtract"])
async def test_a_rejected_lead_is_recycled_as_the_rules_say(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    action: str,
) -> None:
    recycle = (
        "  recycle: {action: disarm, rearm_below: 20}\n"
        if action == "disarm"
        else "  recycle: {action: subtract, points: 60}\n"
    )
    rules_path = rules_with(tmp_path, recycle)
    settings = settings_factory(rules_file=rules_path, decay_tick_s=3600)
    worker = WorkerProcess(settings, tmp_path, name=f"recycle-{action}")
    workers.append(worker)
    await worker.wait_ready()
    now = int(time.time() * 1000)
    t0 = now - 3 * 3_600_000
    await send(settings, hot_lead("fay", t0), [])

    async def handed_off() -> list[dict[str, Any]]:
        return [
            h
            for h in await read_topic(settings, settings.topic_handoffs, 2)
            if h["lead_id"] == "fay"
        ]

    assert await wait_for(handed_off, 60), worker.log()
    await send(
        settings,
        [],
        [outcome("fay", "f1", "sales_rejected", t0 + 10 * MIN_MS, reason="not a fit")],
    )

    async def recycled() -> Any:
        got = await store.lead_state("fay")
        return got if got and any(i.kind == "recycle" for i in items(got)) else None

    fay = await wait_for(recycled, 60)
    assert fay is not None, worker.log()
    # Hot and disarmed already; a burst of activity must not hand her off again while the
    # recycle holds.
    burst = [
        ("page_view", event("fay", "page_view", f"fay-b{i}", t0 + (20 + i) * MIN_MS,
                            properties={"path": "/pricing"}))
        for i in range(3)
    ]  # fmt: skip
    await send(settings, burst, [])

    async def all_applied() -> bool:
        got = await store.lead_state("fay")
        return got is not None and got.last_ms is not None and got.last_ms >= t0 + 22 * MIN_MS

    assert await wait_for(all_applied, 60), worker.log()
    assert len(await handed_off()) == 1
    _, body = worker.get("/leads/fay")
    info = orjson.loads(body)
    if action == "disarm":
        assert info["handoff_armed"] is False
        got = await store.lead_state("fay")
        assert got is not None and got.rearm_below == 20
    else:
        contributions = {c["rule"]: c["points"] for c in info["contributions"]}
        assert contributions["sales_rejected"] == -60
    assert worker.terminate() == 0, worker.log()
