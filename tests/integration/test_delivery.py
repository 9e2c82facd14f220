"""`streamscore deliver` as a real process, a real broker, and local webhooks that misbehave.

The webhooks are aiohttp servers in this test's event loop. Each answers by a script keyed by
path and by how many times it has seen a handoff's Idempotency-Key: fail (500), time out,
rate-limit (429 with Retry-After), refuse (400), then accept. Everything the process sends is
recorded with the time it arrived and, for an accepted request, the time the 2xx was answered.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from streamscore import __version__, dev
from streamscore.config import ENV_PREFIX, Settings
from streamscore.delivery.metrics import DeliverySensor
from streamscore.delivery.policy import Outcome, RetryPolicy
from streamscore.delivery.signing import verify_signature
from streamscore.delivery.webhook import Webhook, WebhookSender
from streamscore.events import compile_schema
from tests.conftest import REPO_ROOT
from tests.integration.harness import (
    DeliverProcess,
    bounded,
    metric_total,
    produce_positions,
    read_topic,
    wait_for,
)

SECRET = "it-signing-secret-0123456789"
HOSTILE_LEAD = "<!channel> & <https://evil.example|click here>"
validate_handoff = compile_schema("handoff.v1.json")
validate_dead_letter = compile_schema("delivery-dead-letter.v1.json")

#: (status, extra headers, seconds to sleep before answering)
Answer = tuple[int, dict[str, str], float]
#: Answers a request given its Idempotency-Key and how many times the path has seen that key.
Script = Callable[[str, int], Answer]
#: The handoff that /stuck never accepts.
STUCK_N = 0


@dataclass
class Received:
    """One request as the webhook saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    arrived: float
    status: int
    answered: float = 0.0  # time.time() when the answer was produced; 0 if never


@dataclass
class Webhooks:
    """Local webhook endpoints; `scripts[path](key, n)` answers the n-th request of a key."""

    scripts: dict[str, Script]
    received: list[Received] = field(default_factory=list)
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)
    base: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        key = request.headers.get("Idempotency-Key", "")
        self.seen[(request.path, key)] += 1
        status, headers, delay = self.scripts[request.path](key, self.seen[(request.path, key)])
        entry = Received(request.path, dict(request.headers), body, time.time(), status)
        self.received.append(entry)
        if delay:
            await asyncio.sleep(delay)
        entry.answered = time.time()
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else "nope")

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def accepted(self, path: str, before: float = float("inf")) -> set[str]:
        """handoff_ids this path answered 2xx for, with the answer produced before `before`."""
        return {
            r.headers["Idempotency-Key"]
            for r in self.received
            if r.path == path and 200 <= r.status < 300 and 0 < r.answered < before
        }


#: 500, then no answer within the 0.5 s timeout, then 429 Retry-After: 1; then accepted.
FLAKY: list[Answer] = [(500, {}, 0.0), (200, {}, 1.5), (429, {"Retry-After": "1"}, 0.0)]


@pytest.fixture
async def webhooks() -> AsyncIterator[Webhooks]:
    """Webhook endpoints on a free loopback port, with the scripts the tests use."""
    hooks = Webhooks(
        {
            # 500, then no answer in time, then 429 Retry-After: 1, then accepted.
            "/flaky": lambda key, n: FLAKY[n - 1] if n <= len(FLAKY) else (200, {}, 0.0),
            "/refuses": lambda key, n: (400, {}, 0.0),
            "/down": lambda key, n: (503, {}, 0.0),
            "/throttled": lambda key, n: (429, {"Retry-After": "3600"}, 0.0),
            "/slow": lambda key, n: (200, {}, 0.4),
            "/ok": lambda key, n: (200, {}, 0.0),
            "/redirect": lambda key, n: (307, {"Location": "/ok"}, 0.0),
            "/stuck": lambda key, n: (
                (503, {}, 0.0) if key == handoff(STUCK_N)["handoff_id"] else (200, {}, 0.0)
            ),
        }
    )
    app = web.Application()
    app.router.add_post("/{name}", hooks.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    port = dev.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    hooks.base = f"http://127.0.0.1:{port}"
    try:
        yield hooks
    finally:
        await runner.cleanup()


def handoff(n: int, lead_id: str | None = None) -> dict[str, Any]:
    """A valid handoff.v1 document, distinct per n."""
    doc = {
        "handoff_id": f"ho-{n:04d}-{n * 7919 % 10007:05d}",
        "lead_id": lead_id or f"lead-{n}",
        "score": 80.0 + n,
        "engagement": 50.0 + n,
        "fit": 30.0,
        "grade": "A",
        "old_tier": "warm",
        "new_tier": "hot",
        "bant": {"budget": True, "authority": n % 2 == 0, "need": True, "timeline": False},
        "bant_met": 3 if n % 2 == 0 else 2,
        "reasons": [
            {"rule": "pricing_page", "points": 20.0},
            {"rule": "demo_request", "points": 15},
        ],
        "triggering_event_id": f"ev-{n}",
        "event_time": "2024-05-01T12:00:00.000Z",
        "scored_at": "2024-05-01T12:00:00.120Z",
        "rules_version": "2024-05-01.1",
        "schema": "streamscore.handoff.v1",
    }
    validate_handoff(doc)
    return doc


def deliver_settings(
    settings_factory: Callable[..., Settings], hooks: Webhooks, paths: list[str], **extra: Any
) -> Settings:
    """Settings for a deliver process: fast retries and short timeouts, so tests take seconds."""
    values: dict[str, Any] = {
        "delivery_webhook_urls": [hooks.url(p) for p in paths],
        "delivery_signing_secret": SECRET,
        "delivery_timeout_s": 0.5,
        "delivery_attempts": 5,
        "delivery_backoff_s": 0.05,
        "delivery_backoff_max_s": 2.0,
        "delivery_web_port": dev.free_port(),
        "commit_interval_s": 0.2,
        **extra,
    }
    settings = settings_factory(**values)
    return settings.model_copy(
        update={"delivery_consumer_group": f"{settings.consumer_group}-delivery"}
    )


async def committed_offsets(settings: Settings) -> dict[int, int]:
    """The delivery group's committed offset per partition of the handoff topic (if any)."""
    # A consumer in the group that never subscribes only reads the group's offsets (the
    # admin client's OffsetFetch version is one the embedded broker answers malformed).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.delivery_consumer_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(settings.topic_handoffs) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(settings.topic_handoffs) or set()
        out = {}
        for p in sorted(partitions):
            offset = await consumer.committed(TopicPartition(settings.topic_handoffs, p))
            if offset is not None:
                out[p] = offset
        return out
    finally:
        await consumer.stop()


def check_request(received: Received, now_slack_s: float = 300) -> dict[str, Any]:
    """Assert what every delivery request must carry; return its JSON body."""
    headers = received.headers
    signature = headers["X-Streamscore-Signature"]
    assert verify_signature(
        SECRET, signature, received.body, now=received.arrived, tolerance_s=now_slack_s
    )
    assert not verify_signature(SECRET, signature, received.body + b" ", now=received.arrived)
    assert signature.startswith(f"t={headers['X-Streamscore-Timestamp']},v1=")
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"streamscore-delivery/{__version__}"
    doc: dict[str, Any] = orjson.loads(received.body)
    return doc


@pytest.mark.slow
@bounded(150)
async def test_every_handoff_arrives_signed_and_failures_are_dead_lettered(
    settings_factory: Callable[..., Settings], webhooks: Webhooks, tmp_path: Path
) -> None:
    settings = deliver_settings(
        settings_factory, webhooks, ["/flaky", "/refuses", "/down", "/throttled"]
    )
    docs = [handoff(n) for n in range(10)]
    poison: list[bytes | None] = [b"not json {", b'{"lead_id": "x"}', None]
    messages: list[tuple[str, bytes | None, bytes | None]] = []
    for n, doc in enumerate(docs):
        messages.append((settings.topic_handoffs, doc["lead_id"].encode(), orjson.dumps(doc)))
        if n % 4 == 1 and poison:
            messages.append((settings.topic_handoffs, b"poison", poison.pop(0)))
    landed = await produce_positions(settings, messages)
    ends: dict[int, int] = defaultdict(int)
    for _, partition, offset in landed:
        ends[partition] = max(ends[partition], offset + 1)

    proc = DeliverProcess(settings, tmp_path)
    try:
        await proc.wait_ready()
        ids = {d["handoff_id"] for d in docs}

        async def all_done() -> bool:
            letters = await read_topic(settings, settings.topic_delivery_dead_letter, 1)
            return webhooks.accepted("/flaky") == ids and len(letters) == 3 * len(docs) + 3

        assert await wait_for(all_done, 90), proc.log()
        # Offsets reach the end of every partition once all is delivered or dead-lettered.
        assert await wait_for(lambda: _committed_to(settings, ends), 15), proc.log()
        status, page = await asyncio.to_thread(proc.get, "/metrics")
        assert status == 200
        status, ready = await asyncio.to_thread(proc.get, "/readyz")
        assert status == 200 and orjson.loads(ready)["ready"] is True
        assert orjson.loads(ready)["webhooks"][1] == {"index": 1, "url": webhooks.base}
        status, alive = await asyncio.to_thread(proc.get, "/healthz")
        assert status == 200 and orjson.loads(alive) == {"alive": True}
    finally:
        code = await asyncio.to_thread(proc.terminate)
    assert code == 0, proc.log()

    # Every request is signed, carries the handoff as produced, and its id as the key.
    by_key: dict[tuple[str, str], list[Received]] = defaultdict(list)
    for r in webhooks.received:
        doc = check_request(r)
        assert r.headers["Idempotency-Key"] == doc["handoff_id"]
        by_key[(r.path, doc["handoff_id"])].append(r)
    for (path, _), requests in by_key.items():
        assert len({r.body for r in requests}) == 1  # a retry re-sends the same handoff
        if path == "/flaky":
            # 500, a timeout, 429 Retry-After: 1, accepted; Retry-After is honoured.
            assert [r.status for r in requests] == [500, 200, 429, 200]
            assert requests[3].arrived - requests[2].arrived >= 0.95
            assert [r.headers["X-Streamscore-Attempt"] for r in requests] == ["1", "2", "3", "4"]
        elif path == "/refuses":
            assert len(requests) == 1  # a 400 is not retried
        elif path == "/down":
            assert len(requests) == settings.delivery_attempts
        else:
            assert len(requests) == 1  # Retry-After: 3600 is beyond delivery_backoff_max_s
    assert {doc for (path, doc) in by_key if path == "/flaky"} == {d["handoff_id"] for d in docs}

    letters = await read_topic(settings, settings.topic_delivery_dead_letter)
    for letter in letters:
        validate_dead_letter(letter)
    assert len({letter["delivery_dead_letter_id"] for letter in letters}) == len(letters)
    by_reason: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for letter in letters:
        by_reason[letter["reason"]].append(letter)
    assert {r: len(v) for r, v in by_reason.items()} == {
        "rejected": 10, "attempts_exhausted": 10, "retry_after_too_long": 10, "invalid_handoff": 3,
    }  # fmt: skip
    expected_webhook = {
        "rejected": (1, 400, 1, "rejected"),
        "attempts_exhausted": (2, 503, settings.delivery_attempts, "server_error"),
        "retry_after_too_long": (3, 429, 1, "rate_limited"),
    }
    for reason, (index, status_code, attempts, outcome) in expected_webhook.items():
        for letter in by_reason[reason]:
            assert letter["webhook"] == {"index": index, "url": webhooks.base}  # no path
            assert (letter["status"], letter["attempts"], letter["outcome"]) == (
                status_code, attempts, outcome,
            )  # fmt: skip
            assert letter["handoff"] in docs
        assert {letter["handoff_id"] for letter in by_reason[reason]} == ids
    assert by_reason["rejected"][0]["response_excerpt"] == "nope"
    originals = sorted(
        (base64.b64decode(letter["original_base64"]) if letter["original_base64"] else None)
        or b"" for letter in by_reason["invalid_handoff"]
    )  # fmt: skip
    assert originals == sorted([b"not json {", b'{"lead_id": "x"}', b""])
    assert SECRET not in proc.log()

    for outcome in ("delivered", "server_error", "timeout", "rate_limited"):
        assert (
            metric_total(
                page.decode(), "streamscore_delivery_requests_total", webhook="0", outcome=outcome
            )
            >= 10
        )
    dead = "streamscore_delivery_dead_letters_total"
    assert metric_total(page.decode(), dead, reason="rejected") == 10
    assert metric_total(page.decode(), dead, reason="invalid_handoff") == 3
    assert metric_total(page.decode(), "streamscore_delivery_retries_total", webhook="2") == 10 * (
        settings.delivery_attempts - 1
    )


async def _committed_to(settings: Settings, ends: dict[int, int]) -> bool:
    return await committed_offsets(settings) == dict(ends)


@pytest.mark.slow
@bounded(150)
async def test_kill_9_mid_delivery_loses_nothing_and_commits_only_what_was_delivered(
    settings_factory: Callable[..., Settings], webhooks: Webhooks, tmp_path: Path
) -> None:
    settings = deliver_settings(settings_factory, webhooks, ["/slow"], delivery_concurrency=3)
    docs = [handoff(n) for n in range(60)]
    landed = await produce_positions(
        settings,
        [(settings.topic_handoffs, d["lead_id"].encode(), orjson.dumps(d)) for d in docs],
    )
    id_at = {(p, o): d["handoff_id"] for (_, p, o), d in zip(landed, docs, strict=True)}

    first = DeliverProcess(settings, tmp_path, "deliver-killed")
    try:
        await first.wait_ready()
        # Mid-delivery: some accepted and committed, most not yet sent.
        assert await wait_for(lambda: _at_least(webhooks, 12), 60), first.log()
        assert await wait_for(lambda: _some_commit(settings), 15), first.log()
    finally:
        first.kill()
    killed_at = time.time()
    await asyncio.sleep(0.5)  # answers still being written when it died are not "delivered"

    committed = await committed_offsets(settings)
    delivered = webhooks.accepted("/slow", before=killed_at)
    assert 0 < len(delivered) < len(docs), "the kill did not land mid-delivery"
    assert committed and sum(committed.values()) > 0
    # The invariant: below the committed offset, every handoff was answered 2xx before the kill.
    for (partition, offset), handoff_id in id_at.items():
        if offset < committed.get(partition, 0):
            assert handoff_id in delivered, (partition, offset, committed)
    assert any(offset >= committed.get(partition, 0) for (partition, offset) in id_at), (
        "everything was committed before the kill"
    )

    second = DeliverProcess(settings, tmp_path, "deliver-restarted")
    try:
        await second.wait_ready()
        ids = {d["handoff_id"] for d in docs}
        assert await wait_for(lambda: _accepted_all(webhooks, ids), 60), second.log()
    finally:
        code = await asyncio.to_thread(second.terminate)
    assert code == 0, second.log()

    counts = Counter(r.headers["Idempotency-Key"] for r in webhooks.received)
    assert set(counts) == ids  # nothing lost
    bodies: dict[str, set[bytes]] = defaultdict(set)
    for r in webhooks.received:
        doc = check_request(r)
        bodies[doc["handoff_id"]].add(r.body)
        assert r.headers["Idempotency-Key"] == doc["handoff_id"]
    assert all(len(b) == 1 for b in bodies.values())  # duplicates are the same handoff, same key
    # Only what was in flight or not committed at the kill may arrive twice.
    assert (
        sum(n - 1 for n in counts.values())
        <= len(docs) - len(delivered) + settings.delivery_concurrency * 2
    )
    assert await read_topic(settings, settings.topic_delivery_dead_letter, 1) == []


async def _at_least(hooks: Webhooks, n: int) -> bool:
    return len(hooks.accepted("/slow")) >= n


async def _some_commit(settings: Settings) -> bool:
    return sum((await committed_offsets(settings)).values()) > 0


async def _accepted_all(hooks: Webhooks, ids: set[str]) -> bool:
    return hooks.accepted("/slow") == ids


@bounded(90)
async def test_slack_format_posts_an_escaped_incoming_webhook_message(
    settings_factory: Callable[..., Settings], webhooks: Webhooks, tmp_path: Path
) -> None:
    settings = deliver_settings(settings_factory, webhooks, ["/ok"], delivery_format="slack")
    doc = handoff(1, lead_id=HOSTILE_LEAD)
    await produce_positions(settings, [(settings.topic_handoffs, b"k", orjson.dumps(doc))])
    proc = DeliverProcess(settings, tmp_path)
    try:
        await proc.wait_ready()
        assert await wait_for(lambda: _accepted_any(webhooks, "/ok"), 30), proc.log()
    finally:
        code = await asyncio.to_thread(proc.terminate)
    assert code == 0, proc.log()
    (received,) = webhooks.received
    message = check_request(received)
    assert received.headers["Idempotency-Key"] == doc["handoff_id"]
    assert set(message) == {"text", "blocks"}
    text = received.body.decode()
    assert "<!channel>" not in text and "<https://evil" not in text
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click here&gt;" in message["text"]
    fields = [f["text"] for f in message["blocks"][1]["fields"]]
    assert "*Lead*\n&lt;!channel&gt; &amp; &lt;https://evil.example|click here&gt;" in fields


async def _accepted_any(hooks: Webhooks, path: str) -> bool:
    return bool(hooks.accepted(path))


@bounded(60)
async def test_an_undelivered_handoff_holds_its_partition_while_later_ones_are_delivered(
    settings_factory: Callable[..., Settings], webhooks: Webhooks, tmp_path: Path
) -> None:
    settings = deliver_settings(
        settings_factory, webhooks, ["/stuck"], topic_partitions=1, delivery_attempts=100,
        delivery_backoff_s=0.2, delivery_backoff_max_s=0.2,
    )  # fmt: skip
    docs = [handoff(n) for n in range(6)]  # handoff STUCK_N first, at offset 0
    await produce_positions(
        settings, [(settings.topic_handoffs, b"k", orjson.dumps(d)) for d in docs]
    )
    proc = DeliverProcess(settings, tmp_path)
    try:
        await proc.wait_ready()
        later = {d["handoff_id"] for d in docs[1:]}
        assert await wait_for(lambda: _accepted_ids(webhooks, "/stuck", later), 30), proc.log()
        await asyncio.sleep(1.0)  # several commit intervals
        assert await committed_offsets(settings) in ({}, {0: 0})
        assert sum(1 for r in webhooks.received if r.status == 503) >= 3  # still retrying
    finally:
        code = await asyncio.to_thread(proc.terminate)
    assert code == 0, proc.log()
    # Stopped while it was retrying: still not committed, so the next start retries it.
    assert await committed_offsets(settings) in ({}, {0: 0})


async def _accepted_ids(hooks: Webhooks, path: str, ids: set[str]) -> bool:
    return ids <= hooks.accepted(path)


@pytest.mark.slow
@bounded(150)
async def test_dev_delivers_the_workers_real_handoffs_when_webhooks_are_set(
    webhooks: Webhooks, tmp_path: Path
) -> None:
    """`streamscore dev --demo` with a webhook: real handoffs from the worker arrive signed."""
    log_path = tmp_path / "dev.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["STREAMSCORE_DELIVERY_WEBHOOK_URLS"] = webhooks.url("/ok")
    env["STREAMSCORE_DELIVERY_SIGNING_SECRET"] = SECRET
    with log_path.open("wb") as log:
        proc = _start_dev(env, log)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not webhooks.accepted("/ok"):
                assert proc.poll() is None, log_path.read_text()[-4000:]
                await asyncio.sleep(0.5)
            text = log_path.read_text(errors="replace")
            assert webhooks.accepted("/ok"), text[-4000:]
            url = re.search(r"^delivery metrics url: (http://\S+/metrics)$", text, re.M)
            assert url, text[-4000:]
            status, page = await asyncio.to_thread(_get, url.group(1))
            assert status == 200
            assert (
                metric_total(page, "streamscore_delivery_requests_total", outcome="delivered") >= 1
            )
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 20)
            assert code == 0, log_path.read_text()[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for received in webhooks.received:
        doc = check_request(received)
        validate_handoff(doc)  # the worker's own output, as delivered
        assert received.headers["Idempotency-Key"] == doc["handoff_id"]
    assert SECRET not in log_path.read_text(errors="replace")


def _start_dev(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamscore.cli", "dev", "--demo", "--rate", "300"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=dev.die_with_parent(os.getpid()),  # noqa: PLW1509 - single-threaded
    )


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


class RecordingSensor(DeliverySensor):
    """Keeps what the sender reports."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, Outcome]] = []
        self.retries = 0

    def request_done(self, webhook: int, outcome: Outcome, seconds: float) -> None:
        self.requests.append((webhook, outcome))

    def retrying(self, webhook: int) -> None:
        self.retries += 1


@bounded(60)
async def test_the_sender_against_a_real_server_follows_no_redirect_and_retries_refusals(
    webhooks: Webhooks,
) -> None:
    sensor = RecordingSensor()
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    body = orjson.dumps(handoff(3))
    policy = RetryPolicy(attempts=5, backoff_s=0.05, backoff_max_s=2.0)
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(
            session, SECRET, policy, 0.5, sensor, sleep=no_sleep, rand=lambda: 0.0
        )
        redirect = await sender.deliver(Webhook.at(0, webhooks.url("/redirect")), body, "ho-r")
        assert (redirect.delivered, redirect.reason, redirect.attempts) == (False, "rejected", 1)
        assert redirect.last.status == 307
        assert [r.path for r in webhooks.received] == ["/redirect"]  # /ok never reached

        closed = f"http://127.0.0.1:{dev.free_port()}/nothing-listens"
        refused = await sender.deliver(Webhook.at(1, closed), body, "ho-c")
        assert (refused.delivered, refused.reason, refused.attempts) == (
            False,
            "attempts_exhausted",
            5,
        )
        assert refused.last.outcome is Outcome.CONNECTION_ERROR
        assert "nothing-listens" not in refused.last.detail  # no URL in what gets logged

        flaky = await sender.deliver(Webhook.at(2, webhooks.url("/flaky")), body, "ho-f")
        assert (flaky.delivered, flaky.attempts) == (True, 4)
    outcomes = [o for w, o in sensor.requests if w == 2]
    assert outcomes == [
        Outcome.SERVER_ERROR,
        Outcome.TIMEOUT,
        Outcome.RATE_LIMITED,
        Outcome.DELIVERED,
    ]
    # Backoff with rand=0 is half the exponential step; the 429 wait is its Retry-After: 1.
    assert waits[-3:] == [0.025, 0.05, 1.0]
    assert sensor.retries == 4 + 3
