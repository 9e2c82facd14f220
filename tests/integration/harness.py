"""Integration harness: run `streamscore worker` as a real process, produce and read topics."""

from __future__ import annotations

import asyncio
import functools
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamscore import dev
from streamscore.config import ENV_PREFIX, Settings, settings_env
from streamscore.runtime.kafka import ensure_topics
from streamscore.scoring import reference, state
from streamscore.scoring.rules import CompiledRules
from streamscore.store.client import open_client
from streamscore.store.keys import KeySpace
from streamscore.store.store import RedisStore


class WorkerProcess:
    """One `streamscore worker` subprocess, stopped by its PID."""

    def __init__(self, settings: Settings, log_dir: Path, name: str = "worker") -> None:
        self.settings = settings
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(settings_env(settings))
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamscore.cli", "worker"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=dev.die_with_parent(os.getpid()),  # noqa: PLW1509 - single-threaded
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}{path}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early ({self.proc.returncode}):\n{self.log()}")
            try:
                status, _ = await asyncio.to_thread(self.get, "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.25)
        raise AssertionError(f"worker not ready after {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def terminate(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, and the exit code; SIGKILL (and an AssertionError) if it overruns."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"worker ignored SIGTERM for {timeout_s}s:\n{self.log()}"
                ) from None
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def event(lead_id: str, event_type: str, event_id: str, time_ms: int, **fields: Any) -> bytes:
    """A native-envelope event."""
    return orjson.dumps(
        {"event_id": event_id, "lead_id": lead_id, "type": event_type, "time": time_ms, **fields}
    )


def lead_view(worker: WorkerProcess, lead_id: str) -> dict[str, Any]:
    """The worker's view of a lead (GET /leads/{id}), or {} while it answers anything but 200
    (no such lead yet, or the worker restarting): callers poll it or assert on its fields."""
    status, body = worker.get("/leads/" + urllib.parse.quote(lead_id, safe=""))
    if status != 200:
        return {}
    view: dict[str, Any] = orjson.loads(body)
    return view


def topic_for(settings: Settings, event_type: str) -> str:
    """The input topic that carries `event_type`."""
    if event_type == "page_view":
        return settings.topic_page_views
    if event_type in ("email_open", "email_click"):
        return settings.topic_email_events
    if event_type == "unsubscribe":
        return settings.topic_unsubscribes
    if event_type == "identify":
        return settings.topic_profiles
    return settings.topic_downloads


async def produce(settings: Settings, messages: Iterable[tuple[str, bytes | None, bytes]]) -> None:
    """Send (topic, key, value) messages and wait until the broker has them all."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(t, v, key=k) for t, k, v in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(settings: Settings, topic: str, timeout_s: float = 5.0) -> list[Any]:
    """Every message currently on `topic` (decoded JSON), read from the start without a group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        idle_rounds = 0
        while time.monotonic() < deadline and idle_rounds < 3:
            batch = await consumer.getmany(timeout_ms=300)
            if not batch:
                caught_up = True
                for tp in partitions:
                    highwater = consumer.highwater(tp)
                    if highwater is None or await consumer.position(tp) < highwater:
                        caught_up = False
                idle_rounds += 1 if caught_up else 0
                continue
            idle_rounds = 0
            for messages in batch.values():
                out.extend(orjson.loads(m.value) for m in messages)
        return out
    finally:
        await consumer.stop()


async def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.25) -> Any:
    """Poll an async predicate until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await predicate()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval_s)


async def produce_positions(
    settings: Settings, messages: Iterable[tuple[str, bytes | None, bytes | None]]
) -> list[tuple[str, int, int]]:
    """Like produce(), and return where each message landed: (topic, partition, offset)."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(t, v, key=k) for t, k, v in messages]
        landed = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.topic, m.partition, m.offset) for m in landed]


async def open_test_store(settings: Settings) -> RedisStore:
    """A store on the test's Redis and key prefix; a 15 s read timeout fails a stuck call."""
    client = await open_client(
        settings.redis_url.get_secret_value(), cluster=None, socket_timeout=15
    )
    return RedisStore(client, KeySpace(settings.redis_key_prefix, settings.redis_key_groups))


async def lead_mismatch(
    store: RedisStore, ref: reference.LeadState, rules: CompiledRules
) -> str | None:
    """How the lead Redis holds differs from the reference's (None when it does not).

    Identity, present time, tier, output sequence, arming and the score at its present; the
    score is read with scoring.state, the one formula of it.
    """
    got = await store.lead_state(ref.lead_id)
    if got is None:
        return f"{ref.lead_id!r}: missing in Redis"
    seen = (got.lead_id, got.last_ms, rules.tiers[got.tier].name, got.seq, got.armed)
    want = (ref.lead_id, ref.last_ms, rules.tiers[ref.tier].name, ref.seq, ref.armed)
    at = ref.last_ms or 0
    score, expected = state.score_at(got, rules, at), reference.score_at(ref, rules, at)
    if seen != want or not math.isclose(score, expected, rel_tol=1e-9, abs_tol=1e-9):
        return f"{ref.lead_id!r}: redis {seen} score {score!r}; reference {want} {expected!r}"
    return None


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` in a Prometheus text page whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def bounded(timeout_s: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Cancel a test that overruns, so the traceback shows the await it was stuck in (the
    pytest-timeout traceback of an asyncio test only shows the idle event loop)."""

    def decorate(test: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(timeout_s):
                await test(*args, **kwargs)

        return run

    return decorate


class DeliverProcess(WorkerProcess):
    """One `streamscore deliver` subprocess, stopped by its PID; its web port is delivery's."""

    def __init__(self, settings: Settings, log_dir: Path, name: str = "deliver") -> None:
        self.settings = settings
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(settings_env(settings))
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamscore.cli", "deliver"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=dev.die_with_parent(os.getpid()),  # noqa: PLW1509 - single-threaded
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.settings.delivery_web_port}{path}"
