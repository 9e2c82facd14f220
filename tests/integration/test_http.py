"""The worker's HTTP surface: lead ids of any character, the bearer token, Redis failures as 503,
and none of Faust's own pages."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson

from streamscore.config import Settings
from tests.conftest import RedisServer
from tests.integration.harness import (
    WorkerProcess,
    bounded,
    event,
    metric_total,
    produce,
    wait_for,
)

TOKEN = "s3cret-t0ken-for-tests"


def get(worker: WorkerProcess, path: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(worker.url(path))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@bounded(150)
async def test_leads_of_any_id_behind_a_token_and_redis_failures_are_503(
    settings_factory: Callable[..., Settings],
    workers: list[WorkerProcess],
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    settings = settings_factory(web_token=TOKEN, redis_retry_max_s=60)
    odd = ["a{g0}:*", "x/y z?", "ünï {b}", "%2F%7B"]
    now = int(time.time() * 1000)
    await produce(
        settings,
        [(settings.topic_page_views, lead.encode(), event(lead, "page_view", f"h{i}", now - 1000))
         for i, lead in enumerate(odd)],
    )  # fmt: skip
    worker = WorkerProcess(settings, tmp_path, name="http")
    workers.append(worker)
    await worker.wait_ready()

    async def scored() -> bool:
        _, body = worker.get("/metrics")
        return metric_total(body.decode(), "streamscore_events_total", outcome="scored") >= 4

    assert await wait_for(scored, 60), worker.log()
    for lead in odd:
        path = "/leads/" + urllib.parse.quote(lead, safe="")
        status, body = get(worker, path, TOKEN)
        assert status == 200, (lead, status, body)
        assert orjson.loads(body)["lead_id"] == lead
        assert get(worker, path)[0] == 401  # personal data: no token, no answer
        assert get(worker, path, "wrong")[0] == 401
    assert get(worker, "/leads/nobody", TOKEN)[0] == 404
    # The operational endpoints stay open to probes and Prometheus.
    assert get(worker, "/metrics")[0] == 200
    assert get(worker, "/healthz")[0] == 200
    # Faust's own pages describe the app to anyone: off.
    for page in ("/router/", "/router/x/", "/table/", "/graph/", "/stats/"):
        assert get(worker, page)[0] == 404, page

    if redis_server.embedded:
        redis_server.stop()
        try:
            for _ in range(3):
                status, body = get(worker, "/leads/" + urllib.parse.quote(odd[0], safe=""), TOKEN)
                assert status == 503, body
                assert orjson.loads(body)["error"] == "redis unavailable"
        finally:
            redis_server.start()
        log = worker.log_path.read_text(errors="replace")
        assert log.count("GET /leads: Redis failed") == 3, log
        assert "Traceback" not in log.split("GET /leads: Redis failed", 1)[1].split("\n", 1)[0]
    assert worker.terminate() == 0, worker.log()
