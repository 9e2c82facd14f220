"""Replay: rescore the retained history of the input topics under candidate rules.

A replay is the worker itself, pointed at a namespace of its own: its own key prefix
(`<prefix>:r:<name>`), its own consumer group, and its own output topics or none. Live keys,
the live group's offsets and sales' topics are never touched. History ends at the high
watermarks read when the replay starts; the aligner's exact merge and event-time ticks make two
replays of the same history end in the same lead states, with the same handoffs.

The replay's record (`<prefix>:r:<name>:meta`) keeps the rules text it ran, so `streamscore
diff` judges its leads under exactly those rules even after the file changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from aiokafka import TopicPartition

from streamscore.config import Settings
from streamscore.errors import StreamscoreError
from streamscore.runtime.kafka import ensure_topics, fetch_history, make_producer
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.scope import LeadSample, ReplayScope
from streamscore.runtime.sensors import Sensor
from streamscore.runtime.worker import ScoringWorker
from streamscore.scoring.rules import parse_rules_text
from streamscore.store.client import RedisClient, open_settings_client
from streamscore.store.keys import KeySpace
from streamscore.store.namespaces import (
    Namespace,
    count_keys,
    delete_namespace,
    replay_namespace,
)
from streamscore.store.store import RedisStore

log = logging.getLogger(__name__)

#: How often progress is reported.
PROGRESS_EVERY_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """What to replay and where."""

    name: str
    rules_file: Path
    from_ms: int | None = None
    until_ms: int | None = None
    leads: LeadSample = field(default_factory=LeadSample)
    #: Send outputs to ss.v1.replay.<name>.* (False: none are sent).
    emit: bool = False
    #: Delete an existing namespace of that name first.
    overwrite: bool = False


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """How a replay went."""

    namespace: Namespace
    rules_version: str
    records: int  # records of the history, by offset
    scored: int  # of them, scored (in the window and the sample)
    skipped: int  # valid, outside the window or the sample
    invalid: int  # dead-lettered when the live worker met them
    seconds: float
    counters: Mapping[str, int]  # the namespace's KPI counters

    @property
    def rate(self) -> float:
        """Records per second."""
        return self.records / self.seconds if self.seconds > 0 else 0.0


class Progress:
    """Where a replay is: records fetched of the history, per second, and how long to go."""

    def __init__(self, history: Mapping[TopicPartition, tuple[int, int]]) -> None:
        self._firsts = {tp: first for tp, (first, _) in history.items()}
        self._ends = {tp: end for tp, (_, end) in history.items()}
        self.total = sum(max(end - self._firsts[tp], 0) for tp, end in self._ends.items())

    def done(self, positions: Mapping[TopicPartition, int]) -> int:
        """Records fetched so far."""
        return sum(
            max(min(positions.get(tp, first), self._ends[tp]) - first, 0)
            for tp, first in self._firsts.items()
        )


def replay_topics(name: str) -> dict[str, str]:
    """The output topic settings of a replay that sends its outputs."""
    base = f"ss.v1.replay.{name}"
    return {
        "topic_handoffs": f"{base}.handoffs",
        "topic_tier_changes": f"{base}.tier-changes",
        "topic_sla_breaches": f"{base}.sla-breaches",
    }


def replay_settings(
    settings: Settings, namespace: Namespace, request: ReplayRequest, run_id: str
) -> Settings:
    """The worker's settings, pointed at the replay's namespace, group and topics."""
    update: dict[str, Any] = {
        "redis_key_prefix": namespace.prefix,
        # A group of its own per run: it starts at the beginning of history and never moves
        # the live group's offsets.
        "consumer_group": f"{settings.consumer_group}.replay.{namespace.name}.{run_id}",
        "rules_file": request.rules_file,
        # Live's forgotten sets (same hash tags): a forgotten lead stays forgotten in a replay.
        "redis_forgotten_prefix": settings.redis_forgotten_prefix or settings.redis_key_prefix,
        "shadow_rules_file": None,
        "ab_experiment_file": None,
    }
    if request.emit:
        update.update(replay_topics(namespace.name))
    return settings.model_copy(update=update)


def meta_key(namespace: Namespace) -> str:
    """The replay's record: a JSON string (one key, outside the lead key groups)."""
    return f"{namespace.prefix}:meta"


async def read_meta(client: RedisClient, namespace: Namespace) -> dict[str, Any] | None:
    """The replay's record, or None when there is none."""
    key = meta_key(namespace)
    raw = await client.execute("GET", key, key=key)
    if raw is None:
        return None
    meta: dict[str, Any] = orjson.loads(raw)
    return meta


async def _write_meta(client: RedisClient, namespace: Namespace, meta: Mapping[str, Any]) -> None:
    key = meta_key(namespace)
    await client.execute("SET", key, orjson.dumps(meta), key=key)


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


async def run_replay(
    settings: Settings,
    request: ReplayRequest,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Rescore the history into the replay's namespace; `on_progress(done, total)` meanwhile."""
    namespace = replay_namespace(settings.redis_key_prefix, request.name)
    rules_text = request.rules_file.read_text(encoding="utf-8")
    rules = parse_rules_text(rules_text, str(request.rules_file))  # fails fast, located
    client = await open_settings_client(settings)
    try:
        await _claim(client, namespace, request)
        history = await fetch_history(settings, settings.input_topics)
        started = datetime.now(UTC)
        run_id = started.strftime("%Y%m%dT%H%M%SZ")
        scope = ReplayScope(
            ends={tp: end for tp, (_, end) in history.items()},
            from_ms=request.from_ms,
            until_ms=request.until_ms,
            leads=request.leads,
            emit=request.emit,
            model=namespace.name,
        )
        meta: dict[str, Any] = {
            "status": "running",
            "rules_file": str(request.rules_file),
            "rules_version": rules.version,
            "rules_text": rules_text,
            "from_ms": request.from_ms,
            "until_ms": request.until_ms,
            "leads": request.leads.describe(),
            "outputs": "topics" if request.emit else "none",
            "started_at": _iso(started),
            "ends": {f"{tp.topic}:{tp.partition}": end for tp, end in history.items()},
        }
        await _write_meta(client, namespace, meta)
        worker_settings = replay_settings(settings, namespace, request, run_id)
        if request.emit:
            await ensure_topics(worker_settings)
        progress = Progress(history)
        began = time.monotonic()
        worker = await _run_worker(worker_settings, client, namespace, scope, progress, on_progress)
        seconds = time.monotonic() - began
        counters = await worker.kpi_counters()
        result = ReplayResult(
            namespace,
            rules.version,
            progress.total,
            progress.total - scope.skipped - scope.invalid,
            scope.skipped,
            scope.invalid,
            seconds,
            counters,
        )
        meta.update(
            status="done",
            finished_at=_iso(datetime.now(UTC)),
            records=result.records,
            scored=result.scored,
            skipped=result.skipped,
            invalid=result.invalid,
            seconds=round(seconds, 3),
        )
        await _write_meta(client, namespace, meta)
        return result
    finally:
        await client.close()


async def _claim(client: RedisClient, namespace: Namespace, request: ReplayRequest) -> None:
    """Start from an empty namespace: refuse to mix two replays' states, or delete the old one."""
    existing = await count_keys(client, namespace)
    if not existing:
        return
    if not request.overwrite:
        meta = await read_meta(client, namespace)
        what = "an interrupted replay" if meta and meta.get("status") != "done" else "a replay"
        raise StreamscoreError(
            f"{namespace.spec} holds {what} already ({existing} keys under {namespace.prefix}:): "
            "pass --overwrite to delete it first, or choose another --name"
        )
    deleted = await delete_namespace(client, namespace)
    log.info("deleted %d keys of the earlier %s", deleted, namespace.spec)


async def _run_worker(
    settings: Settings,
    client: RedisClient,
    namespace: Namespace,
    scope: ReplayScope,
    progress: Progress,
    on_progress: Callable[[int, int], None] | None,
) -> ScoringWorker:
    sensor = Sensor()
    store = RedisStore(
        client,
        KeySpace(namespace.prefix, settings.redis_key_groups, settings.redis_forgotten_prefix),
    )
    rules = RulesHolder(settings.rules_file, sensor, settings.dedup_window_s)
    producer = make_producer(settings)
    await producer.start()
    try:
        worker = ScoringWorker(settings, sensor, rules, store, producer, scope)
        stopping = asyncio.Event()  # never set: the worker stops when the history is scored
        reporter = asyncio.create_task(_report(worker, progress, on_progress))
        try:
            await worker.run(stopping)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        if on_progress is not None:
            on_progress(progress.total, progress.total)  # finished: every record was fetched
        await worker.maintain()
        return worker
    finally:
        await producer.stop()


async def _report(
    worker: ScoringWorker, progress: Progress, on_progress: Callable[[int, int], None] | None
) -> None:
    if on_progress is None:
        return
    while True:
        on_progress(progress.done(worker.partitions.positions), progress.total)
        await asyncio.sleep(PROGRESS_EVERY_S)
