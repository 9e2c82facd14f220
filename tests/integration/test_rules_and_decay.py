"""Inactivity drops come from the timer alone; rules reload live and bad rules are refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from streamscore.config import Settings
from tests.integration.harness import (
    WorkerProcess,
    event,
    metric_total,
    produce,
    read_topic,
    wait_for,
)

RULES = """
version: {version}
decay: {{half_life: 2s}}
engagement:
  - {{id: pricing, when: {{type: page_view, properties.path: /pricing}}, points: {points}}}
tiers:
  - {{name: cold}}
  - {{name: warm, enter: 20, exit: 15}}
  - {{name: hot, enter: 1000}}
handoff: {{tier: hot}}
"""


@pytest.fixture
def worker_with_rules(
    tmp_path: Path, settings_factory: Callable[..., Settings]
) -> Iterator[tuple[WorkerProcess, Path]]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.format(version="v1", points=30))
    settings = settings_factory(rules_file=rules, rules_poll_s=0.3, decay_tick_s=0.2)
    worker = WorkerProcess(settings, tmp_path)
    yield worker, rules
    assert worker.terminate() == 0, worker.log()


async def test_inactivity_drops_a_tier_without_any_new_event(
    worker_with_rules: tuple[WorkerProcess, Path],
) -> None:
    worker, _ = worker_with_rules
    settings = worker.settings
    await worker.wait_ready()
    sent_at = int(time.time() * 1000)
    await produce(
        settings,
        [(settings.topic_page_views, b"quiet",
          event("quiet", "page_view", "q1", sent_at, properties={"path": "/pricing"}))],
    )  # fmt: skip

    async def drop() -> list[dict[str, object]]:
        changes = await read_topic(settings, settings.topic_tier_changes, timeout_s=1)
        return [c for c in changes if c["direction"] == "down"]

    down = await wait_for(drop, 20)
    assert down, worker.log()
    (change,) = down
    assert (change["old_tier"], change["new_tier"], change["cause"]) == ("warm", "cold", "decay")
    assert change["triggering_event_id"] is None
    # 30 points at half-life 2 s fall below exit 15 one half-life after the event, to the ms.
    drop_ms = int(time.mktime(time.strptime(str(change["event_time"])[:19], "%Y-%m-%dT%H:%M:%S")))
    assert abs((drop_ms - time.timezone) * 1000 - (sent_at + 2000)) <= 1000
    up = [
        c for c in await read_topic(settings, settings.topic_tier_changes) if c["direction"] == "up"
    ]
    assert [(c["old_tier"], c["new_tier"], c["cause"]) for c in up] == [("cold", "warm", "event")]


async def test_rules_reload_live_and_an_invalid_file_is_refused(
    worker_with_rules: tuple[WorkerProcess, Path],
) -> None:
    worker, rules = worker_with_rules
    settings = worker.settings
    await worker.wait_ready()

    def version() -> str:
        return str(orjson.loads(worker.get("/readyz")[1])["rules_version"])

    assert version() == "v1"
    await asyncio.sleep(0.05)  # a distinct mtime
    rules.write_text(RULES.format(version="v2", points=5))

    async def reloaded() -> bool:
        return version() == "v2"

    assert await wait_for(reloaded, 10), worker.log()
    rules.write_text("version: v3\ndecay: {half_life: -1}\n")

    async def rejected() -> bool:
        text = worker.get("/metrics")[1].decode()
        return metric_total(text, "streamscore_rules_reloads_total", result="rejected") >= 1

    assert await wait_for(rejected, 10), worker.log()
    assert version() == "v2"
    text = worker.get("/metrics")[1].decode()
    assert 'streamscore_rules_version_info{version="v2"} 1.0' in text
    # New events are scored under v2 and the state records it.
    now = int(time.time() * 1000)
    await produce(
        settings,
        [
            (
                settings.topic_page_views,
                b"r",
                event("r", "page_view", "r1", now, properties={"path": "/pricing"}),
            )
        ],
    )

    async def scored() -> dict[str, object]:
        status, body = worker.get("/leads/r")
        return orjson.loads(body) if status == 200 else {}

    lead = await wait_for(scored, 20)
    assert lead["rules_version"] == "v2"
    # v2 grants 5 points (v1 granted 30); with a 2 s half-life they have decayed a little since.
    (contribution,) = lead["contributions"]
    assert contribution["rule"] == "pricing"
    assert 0 < contribution["points"] <= 5
