"""The two-stage pipeline: batch N+1 is decided while Redis applies batch N, in one event loop.

Stage one (`submit`) holds the batch's offsets in the ledger from the moment it leaves the
aligner, decides and encodes it, yielding to the loop every YIELD_EVERY events so that stage two
can hand Redis the next call as soon as it is free. Stage two (`_apply_loop`) applies batches in
order and releases each one's hold only once it is applied; a batch whose call fails is never
released, so no commit passes it, and the failure ends the pipeline (see `check`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from aiokafka import TopicPartition

from streamscore.runtime.clock import now_ms
from streamscore.runtime.emitter import Emitter
from streamscore.runtime.intake import YIELD_EVERY, Pending
from streamscore.runtime.ledger import Hold, OffsetLedger
from streamscore.runtime.sensors import Sensor
from streamscore.scoring.engine import decide
from streamscore.scoring.rules import CompiledRules
from streamscore.store.store import PackedApply, RedisStore, ScriptResult
from streamscore.store.wire import ScoredEvent, decode_outputs, encode_batches

T = TypeVar("T")
RedisCall = Callable[[Callable[[], Awaitable[T]]], Awaitable[T]]


@dataclass(slots=True)
class Batch:
    """Events released by the aligner, in merge order, on their way to Redis."""

    ready: list[tuple[TopicPartition, Pending]]
    hold: Hold[TopicPartition]
    config: bytes
    calls: list[PackedApply] = field(default_factory=list)


class Pipeline:
    """Decides batches and applies them in Redis, one call per key group, in order."""

    def __init__(
        self,
        store: RedisStore,
        ledger: OffsetLedger[TopicPartition],
        emitter: Emitter,
        sensor: Sensor,
        redis: RedisCall[Any],
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._emitter = emitter
        self._sensor = sensor
        self._redis = redis
        #: Serialises every change of state in Redis: batches, ticks, re-drives, restarts.
        self.lock = asyncio.Lock()
        #: The latest event time applied, for ticks while the worker is behind.
        self.stream_time_ms = 0
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        self._deciding: asyncio.Future[None] | None = None
        self._applier: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run stage two for the duration of the block."""
        self._applier = asyncio.create_task(self._apply_loop(), name="scoring-apply")
        try:
            yield
        finally:
            self._applier.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._applier

    def check(self) -> None:
        """Raise the apply stage's error if it has ended (its batch stays held, uncommitted)."""
        if self._applier is not None and self._applier.done():
            self._applier.result()
            raise RuntimeError("apply stage stopped")

    @property
    def idle(self) -> bool:
        """Nothing is being decided or applied."""
        return self._deciding is None and self._ledger.in_flight == 0

    async def submit(
        self, ready: list[tuple[TopicPartition, Pending]], rules: CompiledRules, config: bytes
    ) -> None:
        """Stage one: hold, decide and encode a released batch, then queue it for stage two.

        The rules and their script config are read together by the caller: a reload can land
        while the batch is decided, and must not pair one version's decisions with the other's.
        """
        firsts: dict[TopicPartition, int] = {}
        for tp, p in ready:
            if tp not in firsts:
                firsts[tp] = p.offset
        # Held from here on, so that a commit while it is decided never passes it.
        batch = Batch(ready, self._ledger.hold(firsts), config)
        deciding = self._deciding = asyncio.get_running_loop().create_future()
        try:
            await self._prepare(batch, rules)
            await self._queue.put(batch)
        finally:
            deciding.set_result(None)
            self._deciding = None

    async def drain(self) -> None:
        """Wait until every submitted batch is applied, or the apply stage has died."""
        if self._deciding is not None:
            await asyncio.shield(self._deciding)  # a batch still being decided goes first
        join = asyncio.ensure_future(self._queue.join())
        waits: set[asyncio.Future[None]] = {join}
        if self._applier is not None:
            waits.add(self._applier)
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        join.cancel()

    async def _prepare(self, batch: Batch, rules: CompiledRules) -> None:
        scored = []
        for i, (tp, p) in enumerate(batch.ready, 1):
            ev = p.event
            scored.append(
                ScoredEvent(
                    ev.lead_id, ev.event_id, ev.time_ms, tp.topic, tp.partition, p.offset,
                    decide(ev, rules),
                )
            )  # fmt: skip
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        store = self._store
        batch.calls = [store.pack(g, batch.config) for g in encode_batches(scored, store.keys)]

    async def _apply_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._queue.get()
            try:
                results = await self._apply(batch)
            finally:
                self._queue.task_done()
            self._ledger.release(batch.hold)
            # Counted on the loop's next turn, by when the next batch has been sent: per-event
            # bookkeeping (about 15 ms a 5,000-event batch) would otherwise leave Redis idle.
            loop.call_soon(self._count_applied, batch, results, now_ms())

    async def _apply(self, batch: Batch) -> list[ScriptResult]:
        async with self.lock:
            scored_at = now_ms()
            results = []
            for call in batch.calls:
                started = time.perf_counter()
                result = await self._redis(partial(self._store.apply_packed, call, scored_at))
                self._sensor.redis_call(
                    "apply_batch", time.perf_counter() - started, len(call.batch.events)
                )
                await self._emitter.emit(
                    result.group, result.outbox_entry, decode_outputs(result.outputs)
                )
                results.append(result)
            self.stream_time_ms = max(self.stream_time_ms, batch.ready[-1][1].event.time_ms)
            return results

    def _count_applied(self, batch: Batch, results: list[ScriptResult], done: int) -> None:
        outcomes: Tally[tuple[str, str]] = Tally()
        for call, result in zip(batch.calls, results, strict=True):
            duplicates = set(result.duplicates)
            for i, ev in enumerate(call.batch.events):
                outcomes[(ev.topic, "duplicate" if i in duplicates else "scored")] += 1
        self._sensor.batch_applied(outcomes, [p.append_ms for _, p in batch.ready], done)
