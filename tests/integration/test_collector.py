"""The collector on a real broker, driven by the real Segment and RudderStack Python SDKs."""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from streamscore import dev
from streamscore.collector.app import make_runner
from streamscore.config import ENV_PREFIX, Settings, settings_env
from streamscore.metrics import CollectorMetrics, create_collector_metrics
from streamscore.runtime.kafka import ensure_topics
from tests.conftest import REPO_ROOT
from tests.integration.harness import WorkerProcess, bounded, metric_total, read_topic, wait_for

KEY = "wk-test-1"
OTHER_KEY = "wk-test-2"


class Sdk(Protocol):
    """What the tests use of either SDK's Client."""

    def track(self, *args: Any, **kwargs: Any) -> tuple[bool, dict[str, Any]]: ...
    def page(self, *args: Any, **kwargs: Any) -> tuple[bool, dict[str, Any]]: ...
    def screen(self, *args: Any, **kwargs: Any) -> tuple[bool, dict[str, Any]]: ...
    def identify(self, *args: Any, **kwargs: Any) -> tuple[bool, dict[str, Any]]: ...
    def alias(self, *args: Any, **kwargs: Any) -> tuple[bool, dict[str, Any]]: ...
    def group(self, *args: Any, **kwargs: Any) -> tuple[bool, dict[str, Any]]: ...
    def flush(self) -> None: ...
    def shutdown(self) -> None: ...


@dataclass
class Running:
    """A collector serving on a free loopback port in this test's event loop."""

    settings: Settings
    metrics: CollectorMetrics
    errors: list[Exception] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.collector_port}"

    def count(self, name: str, **labels: str) -> float:
        text = _exposition(self.metrics)
        return metric_total(text, name, **labels)

    def sdk(self, kind: str, key: str = KEY, **options: Any) -> Sdk:
        """A real SDK client pointed at this collector, its errors collected in self.errors."""

        def on_error(error: Exception, _: list[Any]) -> None:
            self.errors.append(error)

        config: dict[str, Any] = {
            "host": self.url, "on_error": on_error, "upload_interval": 0.05, **options
        }  # fmt: skip
        client: Sdk
        if kind == "segment":
            client = SegmentClient(write_key=key, **config)
        else:
            client = RudderClient(write_key=key, **config)
        return client


def _exposition(metrics: CollectorMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Running]:
    """Serve the collector app in-process until the block ends."""
    metrics = create_collector_metrics(process=False)
    runner = make_runner(settings, metrics)
    await runner.setup()
    try:
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", settings.collector_port)
        await site.start()
        yield Running(settings, metrics)
    finally:
        await runner.cleanup()


@pytest.fixture
def collector_settings(settings_factory: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings for a collector of this test (Tansu: no idempotent producer, see the README)."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "collector_write_keys": f"{KEY},{OTHER_KEY}",
            "collector_port": dev.free_port(),
            "collector_idempotent_producer": False,
            "collector_ack_timeout_s": 5.0,
            **overrides,
        }
        return settings_factory(**values)

    return make


@pytest.fixture
async def collector(collector_settings: Callable[..., Settings]) -> AsyncIterator[Running]:
    async with serving(collector_settings()) as running:
        yield running


async def read_records(
    settings: Settings, topic: str, expect: int, timeout_s: float = 10.0
) -> list[tuple[bytes | None, dict[str, Any]]]:
    """(key, value) of the messages on `topic`, once `expect` of them are there (or timeout)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[tuple[bytes | None, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                found.extend((m.key, orjson.loads(m.value)) for m in messages)
        if len(found) >= expect:  # anything more would be a duplicate: give it a moment
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                found.extend((m.key, orjson.loads(m.value)) for m in messages)
        return found
    finally:
        await consumer.stop()


async def post(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST raw bytes; (status, JSON body, headers)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers or {}) as resp,
    ):
        payload = await resp.read()
        return resp.status, orjson.loads(payload) if payload else {}, dict(resp.headers)


def basic(key: str) -> dict[str, str]:
    """The Authorization header of a write key, as the SDKs send it."""
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


# ------------------------------------------------------------------------------ the SDKs


CALLS: list[tuple[str, dict[str, Any], str]] = [
    # (method, arguments, topic setting it must land on)
    ("track", {"user_id": "lead-a", "event": "Demo Requested"}, "topic_downloads"),
    ("track", {"user_id": "lead-a", "event": "Email Link Clicked"}, "topic_email_events"),
    ("track", {"anonymous_id": "anon-b", "event": "Form Submitted",
               "properties": {"form": "contact-sales"}}, "topic_track"),
    ("page", {"anonymous_id": "anon-b", "name": "Pricing",
              "properties": {"path": "/pricing"}}, "topic_page_views"),
    ("screen", {"user_id": "lead-c", "name": "Dashboard"}, "topic_page_views"),
    ("identify", {"user_id": "lead-a", "traits": {"title": "VP Sales"}}, "topic_profiles"),
    ("alias", {"previous_id": "anon-b", "user_id": "lead-a"}, "topic_profiles"),
    ("group", {"user_id": "lead-c", "group_id": "acme", "traits": {"employees": 900}},
     "topic_profiles"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sdk", "use_gzip"), [("segment", False), ("segment", True), ("rudder", True)]
)
@bounded(90)
async def test_sdk_calls_land_on_their_topics_keyed_by_lead(
    collector: Running, sdk: str, use_gzip: bool
) -> None:
    client = collector.sdk(sdk, gzip=use_gzip)
    sent: dict[str, list[dict[str, Any]]] = {}
    for method, kwargs, topic_setting in CALLS:
        ok, message = getattr(client, method)(**kwargs)
        assert ok
        sent.setdefault(getattr(collector.settings, topic_setting), []).append(message)
    await asyncio.to_thread(client.shutdown)
    assert not collector.errors
    for topic, messages in sent.items():
        landed = await read_records(collector.settings, topic, len(messages))
        by_id = {value["messageId"]: (key, value) for key, value in landed}
        assert len(landed) == len(messages) == len(by_id), topic
        for message in messages:
            key, value = by_id[message["messageId"]]
            assert key == (message.get("userId") or message["anonymousId"]).encode()
            assert value["type"] == message["type"] and "writeKey" not in value
            assert value["receivedAt"] and value["originalTimestamp"] == message["timestamp"]
    # The SDKs post everything to /v1/batch, in as few requests as their queue allows.
    assert collector.count("streamscore_collector_requests_total", endpoint="batch", status="200")
    assert collector.count("streamscore_collector_events_total") == len(CALLS)
    encoding = "gzip" if use_gzip else "identity"
    assert collector.count("streamscore_collector_received_bytes_total", encoding=encoding) > 0


@pytest.mark.parametrize("sdk", ["segment", "rudder"])
@bounded(60)
async def test_a_wrong_write_key_is_401_and_the_sdk_does_not_retry(
    collector: Running, sdk: str
) -> None:
    client = collector.sdk(sdk, key="not-a-key", max_retries=3)
    client.track(user_id="lead-a", event="Demo Requested")
    await asyncio.to_thread(client.shutdown)
    assert len(collector.errors) == 1
    assert getattr(collector.errors[0], "status", None) == 401
    assert getattr(collector.errors[0], "code", None) == "invalid_write_key"
    assert collector.count("streamscore_collector_requests_total", status="401") == 1
    assert collector.count("streamscore_collector_events_total") == 0


@bounded(60)
async def test_segment_sync_mode_and_the_second_key(collector: Running) -> None:
    client = collector.sdk("segment", key=OTHER_KEY, sync_mode=True)
    ok, message = await asyncio.to_thread(client.track, user_id="lead-s", event="Trial Started")
    assert ok
    landed = await read_records(collector.settings, collector.settings.topic_downloads, 1)
    assert [key for key, _ in landed] == [b"lead-s"]
    assert landed[0][1]["messageId"] == message["messageId"]


# ------------------------------------------------------------------------------ raw HTTP shapes


@bounded(60)
async def test_analytics_js_and_http_api_shapes(collector: Running) -> None:
    now = "2026-01-01T00:00:00.000Z"
    # analytics.js: one-letter paths, text/plain, the write key in the body, sentAt per message.
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/v1/p", {"type": "page", "anonymousId": "anon-js", "properties": {"path": "/"}}),
        ("/v1/t", {"type": "track", "event": "Form Submitted", "anonymousId": "anon-js"}),
        ("/v1/i", {"type": "identify", "userId": "u-js", "anonymousId": "anon-js"}),
    ]
    for path, body in calls:
        doc = {**body, "writeKey": KEY, "messageId": f"ajs-{path[-1]}", "timestamp": now,
               "sentAt": now}  # fmt: skip
        status, reply, _ = await post(
            collector.url + path, orjson.dumps(doc), {"Content-Type": "text/plain"}
        )
        assert (status, reply) == (200, {"success": True})
    # The HTTP API: single calls without type or messageId, and /v1/import as /v1/batch.
    status, _, _ = await post(
        collector.url + "/v1/track",
        orjson.dumps({"userId": "u-http", "event": "Webinar Registered"}),
        basic(KEY),
    )
    assert status == 200
    batch = {"batch": [{"type": "track", "userId": "u-http", "event": "Content Downloaded"}]}
    status, _, _ = await post(
        collector.url + "/v1/import",
        gzip.compress(orjson.dumps(batch)),
        {**basic(KEY), "Content-Encoding": "gzip"},
    )
    assert status == 200
    settings = collector.settings
    pages = await read_records(settings, settings.topic_page_views, 1)
    custom = await read_records(settings, settings.topic_track, 1)
    downloads = await read_records(settings, settings.topic_downloads, 2)
    assert [k for k, _ in pages] == [b"anon-js"] and [k for k, _ in custom] == [b"anon-js"]
    assert {k for k, _ in downloads} == {b"u-http"}
    assert all(v["messageId"].startswith("ss-") for _, v in downloads)


@bounded(60)
async def test_limits_errors_and_nothing_produced(collector: Running) -> None:
    url = collector.url
    big = {"batch": [{"type": "track", "userId": f"u{i}", "event": "x", "properties":
                      {"pad": "p" * 30_000}} for i in range(20)]}  # fmt: skip
    cases: list[tuple[str, bytes, dict[str, str], int, str]] = [
        ("/v1/batch", orjson.dumps(big), basic(KEY), 413, "request_too_large"),
        ("/v1/track", orjson.dumps(big["batch"][0] | {"pad": "q" * 3000}), basic(KEY), 413,
         "request_too_large"),
        ("/v1/batch", orjson.dumps({"batch": [big["batch"][0] | {"pad": "q" * 3000}]}),
         basic(KEY), 400, "message_too_large"),
        ("/v1/batch", gzip.compress(b" " * 10_000_000), {**basic(KEY), "Content-Encoding": "gzip"},
         413, "request_too_large"),
        ("/v1/batch", b'{"batch": [', basic(KEY), 400, "malformed_json"),
        ("/v1/batch", b'{"batch": []}', {}, 401, "missing_write_key"),
        ("/v1/batch", b'{"batch": []}', {"Content-Encoding": "br", **basic(KEY)}, 415,
         "unsupported_encoding"),
        ("/v1/track", b'{"event": "x"}', basic(KEY), 400, "missing_lead_id"),
        ("/v2/track", b"{}", basic(KEY), 404, "not_found"),
    ]  # fmt: skip
    for path, body, headers, status, code in cases:
        got, reply, _ = await post(url + path, body, headers)
        assert (got, reply.get("code")) == (status, code), (path, reply)
        assert reply["success"] is False and reply["message"]
        assert collector.count("streamscore_collector_rejected_requests_total", reason=code)
    status, reply, _ = await post(url + "/v1/batch", b'{"batch": []}', basic(KEY))
    assert (status, reply) == (200, {"success": True})
    assert collector.count("streamscore_collector_events_total") == 0


@bounded(60)
async def test_rudder_sdk_gives_up_on_413_as_on_any_4xx(collector: Running) -> None:
    # Rudder batches up to 4 MB; past collector_max_request_bytes its batch is refused, once.
    client = collector.sdk("rudder", upload_size=40, upload_interval=1.0, max_retries=3)
    for i in range(30):
        client.track(user_id=f"u{i}", event="Form Submitted", properties={"pad": "p" * 30_000})
    await asyncio.to_thread(client.shutdown)
    assert collector.errors and all(getattr(e, "status", 0) == 413 for e in collector.errors)
    assert collector.count("streamscore_collector_requests_total", status="413") == len(
        collector.errors
    )


@bounded(60)
async def test_cors_preflight_and_allowed_origins(
    collector_settings: Callable[..., Settings],
) -> None:
    settings = collector_settings(
        collector_allowed_origins="https://shop.example, https://b.example/"
    )
    async with serving(settings) as running, aiohttp.ClientSession() as session:
        preflight = {
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,anonymousid",
        }
        async with session.options(running.url + "/v1/track", headers=preflight) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert (
                resp.headers["Access-Control-Allow-Headers"]
                == preflight["Access-Control-Request-Headers"]
            )
        body = orjson.dumps({"type": "page", "anonymousId": "a1", "writeKey": KEY})
        for origin in ("https://shop.example", "https://b.example"):
            status, _, headers = await post(running.url + "/v1/p", body, {"Origin": origin})
            assert status == 200 and headers["Access-Control-Allow-Origin"] == origin
            assert headers["Access-Control-Allow-Credentials"] == "true"
        async with session.options(
            running.url + "/v1/track", headers={**preflight, "Origin": "https://evil.example"}
        ) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
        status, reply, _ = await post(
            running.url + "/v1/p", body, {"Origin": "https://evil.example"}
        )
        assert (status, reply["code"]) == (403, "origin_not_allowed")
        status, _, headers = await post(running.url + "/v1/p", body)  # no Origin: not a browser
        assert status == 200 and "Access-Control-Allow-Origin" not in headers


# ------------------------------------------------------------------------------ broker outage


@pytest.fixture
def own_broker() -> Iterator[list[dev.EmbeddedServer]]:
    """A broker of this test alone, which it stops and restarts; every one is stopped at the end."""
    brokers = [dev.start_broker()]
    yield brokers
    for broker in brokers:
        broker.stop()


@bounded(150)
async def test_broker_outage_gives_503_and_the_sdk_retry_delivers(
    collector_settings: Callable[..., Settings], own_broker: list[dev.EmbeddedServer]
) -> None:
    broker = own_broker[0]
    settings = collector_settings(
        kafka_bootstrap=broker.bootstrap, collector_ack_timeout_s=1.5, collector_retry_after_s=1
    )
    async with serving(settings) as running:
        client = running.sdk("segment")
        _, before = client.track(user_id="lead-o", event="Demo Requested")
        await asyncio.to_thread(client.flush)
        assert await read_records(settings, settings.topic_downloads, 1)

        broker.stop()  # by its PID
        _, during = client.track(user_id="lead-o", event="Trial Started")

        async def refused() -> float:
            return running.count("streamscore_collector_requests_total", status="503")

        assert await wait_for(refused, 30), "no 503 while the broker was down"
        assert await read_topic_unreachable(settings)
        # The SDK holds the batch (Retry-After puts it in its rate-limited re-queue mode).
        assert not running.errors

        own_broker.append(dev.start_broker(port=broker.port))
        await ensure_topics(settings)  # the embedded broker keeps no state across restarts
        await asyncio.to_thread(client.shutdown)
        assert not running.errors
        landed = await read_records(settings, settings.topic_downloads, 1, timeout_s=20)
        ids = {value["messageId"] for _, value in landed}
        # At least once: a copy the producer still held may land too, with the same id.
        assert during["messageId"] in ids and before["messageId"] not in ids
        assert {key for key, _ in landed} == {b"lead-o"}
        assert running.count("streamscore_collector_requests_total", status="200") >= 2


@bounded(90)
async def test_past_the_pending_bound_requests_get_429_with_retry_after(
    collector_settings: Callable[..., Settings], own_broker: list[dev.EmbeddedServer]
) -> None:
    broker = own_broker[0]
    settings = collector_settings(
        kafka_bootstrap=broker.bootstrap,
        collector_max_pending_events=4,
        collector_retry_after_s=3,
        collector_ack_timeout_s=1.0,
    )

    def batch(n: int) -> bytes:
        return orjson.dumps({"batch": [{"type": "page", "anonymousId": f"a{i}"} for i in range(n)]})

    async with serving(settings) as running:
        # A lone request is taken even past the bound, so no batch size can starve.
        status, _, _ = await post(running.url + "/v1/b", batch(6), basic(KEY))
        assert status == 200
        broker.stop()  # by its PID: what is sent now stays pending in the producer
        status, reply, _ = await post(running.url + "/v1/b", batch(3), basic(KEY))
        assert (status, reply["code"]) == (503, "broker_unavailable")
        assert running.count("streamscore_collector_pending_events") == 3
        status, reply, headers = await post(running.url + "/v1/b", batch(2), basic(KEY))
        assert (status, reply["code"]) == (429, "overloaded")  # 3 + 2 > 4, refused at once
        assert headers["Retry-After"] == "3" and headers["X-RateLimit-Reset"] == "3"
        status, reply, _ = await post(running.url + "/v1/b", batch(1), basic(KEY))
        assert status == 503  # 3 + 1 <= 4: taken, and not acknowledged


async def read_topic_unreachable(settings: Settings) -> bool:
    """True once the broker of `settings` refuses connections."""
    try:
        _, writer = await asyncio.open_connection(*settings.kafka_bootstrap.rsplit(":", 1))
    except OSError:
        return True
    writer.close()
    return False


# ------------------------------------------------------------------------------ processes


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings_env(settings))
    return env


def _run(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streamscore.cli", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=dev.die_with_parent(os.getpid()),  # noqa: PLW1509 - single-threaded
        )


async def _ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert proc.poll() is None, await asyncio.to_thread(log.read_text)
            try:
                async with session.get(url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"not ready after {timeout_s}s:\n{await asyncio.to_thread(log.read_text)}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    return proc.returncode


@bounded(90)
async def test_collector_command_serves_and_stops_cleanly(
    collector_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = collector_settings()
    no_keys = _run(["collector"], _env(settings) | {f"{ENV_PREFIX}COLLECTOR_WRITE_KEYS": ""},
                   tmp_path / "no-keys.log")  # fmt: skip
    assert await asyncio.to_thread(no_keys.wait, 30) == 2
    assert "collector_write_keys is empty" in (tmp_path / "no-keys.log").read_text()

    refused = _run(["collector"], _env(settings) | {
        f"{ENV_PREFIX}COLLECTOR_IDEMPOTENT_PRODUCER": "true"}, tmp_path / "idem.log")  # fmt: skip
    assert await asyncio.to_thread(refused.wait, 60) == 1
    assert "collector_idempotent_producer=false" in (tmp_path / "idem.log").read_text()

    log = tmp_path / "collector.log"
    proc = _run(["collector"], _env(settings), log)
    try:
        url = f"http://127.0.0.1:{settings.collector_port}"
        await _ready(url, proc, log, 30)
        client = RudderClient(write_key=KEY, host=url, upload_interval=0.05)
        client.identify(user_id="lead-p", traits={"title": "CTO"})
        await asyncio.to_thread(client.shutdown)
        landed = await read_records(settings, settings.topic_profiles, 1)
        assert [key for key, _ in landed] == [b"lead-p"]
    finally:
        assert await asyncio.to_thread(_stop, proc) == 0, log.read_text()
    assert KEY not in log.read_text()  # write keys are secrets: never logged


# ------------------------------------------------------------------------------ end to end


@bounded(150)
async def test_sdk_events_are_scored_by_the_worker_and_hand_off(
    collector_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = collector_settings()
    worker = WorkerProcess(settings, tmp_path)
    try:
        await worker.wait_ready()
        async with serving(settings) as running:
            client = running.sdk("segment", gzip=True)
            client.identify(user_id="dana", traits={
                "title": "Chief Revenue Officer", "company_size": 5000, "budget": 90000,
                "purchase_timeline": "now", "industry": "saas"})  # fmt: skip
            client.page(user_id="dana", name="Pricing", properties={"path": "/pricing"})
            client.track(user_id="dana", event="Demo Requested")
            client.page(user_id="dana", properties={"path": "/pricing/enterprise"})
            client.track(user_id="dana", event="Trial Started")
            client.track(user_id="dana", event="Email Link Clicked")
            client.track(user_id="dana", event="LinkedIn Post Liked")  # custom: not scored yet
            await asyncio.to_thread(client.shutdown)
            assert not running.errors

        async def handoffs() -> list[Any]:
            return await read_topic(settings, settings.topic_handoffs, timeout_s=2)

        found = await wait_for(handoffs, 60)
        assert [h["lead_id"] for h in found] == ["dana"], worker.log()
        assert found[0]["new_tier"] == "hot"

        async def scored() -> bool:
            text = (await asyncio.to_thread(worker.get, "/metrics"))[1].decode()
            return metric_total(text, "streamscore_events_total", outcome="scored") >= 6

        assert await wait_for(scored, 30), worker.log()
    finally:
        assert worker.terminate() == 0, worker.log()


@bounded(150)
async def test_dev_runs_the_collector_and_prints_its_url(tmp_path: Path) -> None:
    log = tmp_path / "dev.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    proc = _run(["dev"], env, log)
    try:
        deadline = time.monotonic() + 90
        found = None
        while found is None and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            await asyncio.sleep(0.3)
            found = re.search(r"^collector url: (http://127\.0\.0\.1:\d+) \(write key: dev\)$",
                              log.read_text(), re.M)  # fmt: skip
        assert found, log.read_text()
        url = found.group(1)
        await _ready(url, proc, log, 60)
        errors: list[Exception] = []
        client = SegmentClient(
            write_key="dev", host=url, upload_interval=0.05, on_error=lambda e, _: errors.append(e)
        )
        client.track(user_id="lead-dev", event="Demo Requested")
        await asyncio.to_thread(client.shutdown)
        assert not errors
        metrics_url = re.search(r"^metrics url: (\S+)$", log.read_text(), re.M)
        assert metrics_url

        async def scored() -> bool:
            # The collector answers before the worker's web server binds: not up yet is "not yet".
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(metrics_url.group(1)) as r,
                ):
                    text = await r.text()
            except aiohttp.ClientConnectionError:
                return False
            return metric_total(text, "streamscore_events_total", outcome="scored") >= 1

        assert await wait_for(scored, 60), log.read_text()[-4000:]
    finally:
        assert await asyncio.to_thread(_stop, proc) == 0, log.read_text()[-4000:]
