"""The hot path: fetch a batch, parse, align, decide, apply in Redis, emit outputs, commit."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, TypeVar

import redis.exceptions as redis_errors
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from streamscore.config import Settings
from streamscore.errors import InvalidEvent
from streamscore.events import Event, Limits, parse_event
from streamscore.events.deadletter import dead_letter_record
from streamscore.events.outputs import format_output
from streamscore.kafka.clients import make_consumer
from streamscore.metrics import Metrics
from streamscore.retry import with_retry
from streamscore.ruleset import RulesHolder
from streamscore.scoring.engine import decide
from streamscore.scoring.rules import CompiledRules
from streamscore.store.store import PackedApply, RedisStore, ScriptResult
from streamscore.store.wire import ScoredEvent, decode_outputs, encode_batches
from streamscore.stream.align import Aligner

log = logging.getLogger(__name__)
T = TypeVar("T")

COMMIT_TIMEOUT_S = 5.0
#: Events parsed or decided between two yields to the event loop. A 5,000-event batch is
#: 200-300 ms of CPU; without yields the apply stage could not read Redis's reply (and send the
#: next batch) until it was done, and Redis sat idle for that long.
YIELD_EVERY = 256
REDIS_TRANSIENT = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    TimeoutError,  # redis_timeout_s passed; redis-py drops a connection left mid-call
)
KAFKA_TRANSIENT = (KafkaError,)


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class Pending(NamedTuple):
    """A valid event waiting in the aligner, with its source offset and broker append time."""

    event: Event
    offset: int
    append_ms: int


@dataclass(slots=True)
class PreparedBatch:
    """Events decided and encoded, waiting for (or in) their Redis call."""

    ready: list[tuple[TopicPartition, Pending]]
    calls: list[PackedApply]
    config: bytes
    first_offsets: dict[TopicPartition, int]


def _merge_key(p: Pending) -> tuple[int, str]:
    return (p.event.time_ms, p.event.event_id)


def _offset(p: Pending) -> int:
    return p.offset


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: ScoringWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._worker.on_assigned(assigned)


class ScoringWorker:
    """Consumes the input topics in batches; keeps lead state in Redis, exactly once in effect."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        rules: RulesHolder,
        store: RedisStore,
        producer: AIOKafkaProducer,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.rules = rules
        self.store = store
        self.producer = producer
        self.limits = Limits.from_settings(settings)
        self.kinds = settings.topic_kinds
        self.aligner: Aligner[TopicPartition, Pending] = Aligner(
            _merge_key, _offset, settings.align_max_wait_ms
        )
        self.assigned: set[TopicPartition] = set()
        self.redis_ok = True
        self.stream_time_ms = 0
        self.consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        # Batches decided but not yet applied: stage one prepares the next batch while stage
        # two waits on Redis for this one. Their first offsets hold back commits.
        self._in_flight: list[PreparedBatch] = []
        self._queue: asyncio.Queue[PreparedBatch] = asyncio.Queue(maxsize=1)
        self._preparing: asyncio.Future[None] | None = None
        self._holding = False
        self._applier: asyncio.Task[None] | None = None
        self._acking: set[asyncio.Task[None]] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._next_commit = 0.0
        self._next_lag = 0.0

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        """Partitions assigned and Redis reachable."""
        return bool(self.assigned) and self.redis_ok

    def _set_redis_failing(self, failing: bool) -> None:
        self.redis_ok = not failing
        self.metrics.ready.set(1 if self.ready else 0)

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start aligning newly assigned partitions."""
        self.assigned |= assigned
        self.aligner.assign(assigned, now_ms())
        self.metrics.partitions_assigned.set(len(self.assigned))
        self.metrics.ready.set(1 if self.ready else 0)
        log.info("assigned %d partitions", len(assigned))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish the batches in flight, commit what was applied, and forget the partitions."""
        self._holding = True
        try:
            await self._drain()
        finally:
            self._holding = False
        async with self._lock:
            if self.consumer is not None:
                await self._commit(self.consumer, only=revoked)
            self.aligner.revoke(revoked)
            self.assigned -= revoked
            for tp in revoked:
                self._positions.pop(tp, None)
        self.metrics.partitions_assigned.set(len(self.assigned))
        self.metrics.ready.set(1 if self.ready else 0)

    # ------------------------------------------------------------------ main loop

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until `stopping` is set, then commit what was applied and leave the group."""
        consumer = make_consumer(self.settings, _Rebalance(self))
        self.consumer = consumer
        await consumer.start()
        applier = self._applier = asyncio.create_task(self._apply_loop(), name="scoring-apply")
        try:
            while not stopping.is_set():
                if applier.done():
                    applier.result()  # re-raises: Redis stayed away past the retry budget
                    raise RuntimeError("apply stage stopped")
                await self.step(consumer)
            await self._drain()
            await self.wait_acks()
        finally:
            applier.cancel()
            try:
                async with self._lock:
                    await self._commit(consumer)
            finally:
                self.assigned.clear()
                await consumer.stop()
                self.consumer = None

    async def _drain(self) -> None:
        """Wait until every prepared batch has been applied (or the apply stage died)."""
        if self._preparing is not None:
            await asyncio.shield(self._preparing)  # a batch still being decided goes first
        join = asyncio.ensure_future(self._queue.join())
        waits: set[asyncio.Future[None]] = {join}
        if self._applier is not None:
            waits.add(self._applier)
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        join.cancel()

    async def _apply_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._queue.get()
            try:
                results = await self._apply(batch)
            finally:
                self._in_flight.remove(batch)
                self._queue.task_done()
            # Counted on the loop's next turn, by when the next batch has been sent: per-event
            # bookkeeping (about 15 ms a 5,000-event batch) would otherwise leave Redis idle.
            loop.call_soon(self._count_applied, batch, results, now_ms())

    async def step(self, consumer: AIOKafkaConsumer) -> int:
        """One fetch; hand what the aligner releases to the apply stage; returns its size."""
        records = await consumer.getmany(
            timeout_ms=self.settings.fetch_timeout_ms, max_records=self.settings.batch_max_events
        )
        now = now_ms()
        rejected: list[tuple[TopicPartition, Any, InvalidEvent]] = []
        parsed = 0
        for tp, messages in records.items():
            kind = self.kinds[tp.topic]
            valid = []
            for m in messages:
                try:
                    valid.append(
                        Pending(parse_event(m.value, kind, now, self.limits), m.offset, m.timestamp)
                    )
                except InvalidEvent as exc:
                    rejected.append((tp, m, exc))
                parsed += 1
                if parsed % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            self._positions[tp] = messages[-1].offset + 1
            self.aligner.push(tp, valid, messages[-1].offset + 1)
        if rejected:
            await self._dead_letter(rejected, now)
        await self._note_positions(consumer, now)
        ready = [] if self._holding else self.aligner.pop_ready(now, self.settings.batch_max_events)
        self._flow_control(consumer)
        if ready:
            # In flight from here on, so that a commit while it is decided never passes it.
            # The rules and their script config are read together: a reload can land while
            # the batch is decided, and must not pair one version's decisions with the other.
            rules = self.rules.rules
            batch = self._start_batch(ready, self.rules.script_config)
            preparing = self._preparing = asyncio.get_running_loop().create_future()
            try:
                await self._prepare(batch, rules)
                await self._queue.put(batch)
            finally:
                preparing.set_result(None)
                self._preparing = None
        if time.monotonic() >= self._next_commit:
            async with self._lock:
                await self._commit(consumer)
        return len(ready)

    def _flow_control(self, consumer: AIOKafkaConsumer) -> None:
        """Pause fetching the partitions the aligner holds enough of; resume them when drained."""
        paused = consumer.paused()
        pause, resume = self.aligner.flow(paused, self.settings.align_max_buffered)
        # pause() raises for a partition the consumer no longer has, and the aligner's set and
        # the consumer's can differ while a rebalance is under way.
        assigned = consumer.assignment()
        pause = [tp for tp in pause if tp in assigned]
        if pause:
            consumer.pause(*pause)
            self.metrics.fetch_pauses_total.inc(len(pause))
        if resume:
            consumer.resume(*resume)
        self.metrics.align_buffered_events.set(self.aligner.buffered())
        self.metrics.partitions_paused.set(len(paused) + len(pause) - len(resume))

    async def _note_positions(self, consumer: AIOKafkaConsumer, now: int) -> None:
        update_lag = time.monotonic() >= self._next_lag
        lag: Tally[str] = Tally()
        for tp in list(self.assigned):
            position = self._positions.get(tp)
            if position is None:
                try:
                    position = await consumer.position(tp)
                except IllegalStateError:
                    continue
                self._positions[tp] = position
            # Tansu's "latest offset" answer is wrong for multi-record batches; the high
            # watermark that comes back with every fetch is right, so lag is computed from it.
            highwater = consumer.highwater(tp)
            backlog = None if highwater is None else max(highwater - position, 0)
            if highwater is not None and position > highwater:
                await self._restart_partition(consumer, tp, position, highwater)
                backlog = None
            self.aligner.note_position(tp, backlog, now)
            if update_lag and backlog is not None:
                lag[tp.topic] += backlog
        if update_lag:
            self._next_lag = time.monotonic() + 1.0
            for topic in self.settings.input_topics:
                self.metrics.consumer_lag_messages.labels(topic=topic).set(lag[topic])

    async def _restart_partition(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, position: int, highwater: int
    ) -> None:
        """The partition shrank below our position: it was recreated or truncated.

        Its old offsets mean nothing now, so the store forgets them and the partition is read
        again from its beginning; without this, new records at reused offsets would be skipped.
        """
        log.error(
            "%s[%d]: position %d is beyond the high watermark %d; the topic was recreated or "
            "truncated. Forgetting its applied offsets and reading it from the beginning.",
            tp.topic, tp.partition, position, highwater,
        )  # fmt: skip
        await self._drain()
        async with self._lock:
            await self._redis(partial(self.store.forget_offsets, f"{tp.topic}:{tp.partition}"))
            self.aligner.revoke([tp])
            self.aligner.assign([tp], now_ms())
            await consumer.seek_to_beginning(tp)
            self._positions[tp] = 0

    # ------------------------------------------------------------------ applying

    def _start_batch(
        self, ready: list[tuple[TopicPartition, Pending]], config: bytes
    ) -> PreparedBatch:
        first_offsets: dict[TopicPartition, int] = {}
        for tp, p in ready:
            if tp not in first_offsets:
                first_offsets[tp] = p.offset
        batch = PreparedBatch(ready, [], config, first_offsets)
        self._in_flight.append(batch)
        return batch

    async def _prepare(self, batch: PreparedBatch, rules: CompiledRules) -> None:
        """Decide and encode released events: CPU work, done while Redis applies the last batch.

        It yields to the event loop every YIELD_EVERY events, so that the apply stage can hand
        Redis the next batch as soon as the last one is done.
        """
        scored = []
        for i, (tp, p) in enumerate(batch.ready, 1):
            ev = p.event
            scored.append(
                ScoredEvent(
                    ev.lead_id,
                    ev.event_id,
                    ev.time_ms,
                    tp.topic,
                    tp.partition,
                    p.offset,
                    decide(ev, rules),
                )
            )
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        batch.calls = [
            self.store.pack(group, batch.config)
            for group in encode_batches(scored, self.store.keys)
        ]

    async def _apply(self, batch: PreparedBatch) -> list[ScriptResult]:
        async with self._lock:
            scored_at = now_ms()
            results = []
            for call in batch.calls:
                result = await self._redis(partial(self.store.apply_packed, call, scored_at))
                await self._emit(result)
                results.append(result)
            self.stream_time_ms = max(self.stream_time_ms, batch.ready[-1][1].event.time_ms)
            return results

    def _count_applied(self, batch: PreparedBatch, results: list[ScriptResult], done: int) -> None:
        outcomes: Tally[tuple[str, str]] = Tally()
        for call, result in zip(batch.calls, results, strict=True):
            duplicates = set(result.duplicates)
            for i, ev in enumerate(call.batch.events):
                outcomes[(ev.topic, "duplicate" if i in duplicates else "scored")] += 1
        observe = self.metrics.event_to_scored_seconds.observe
        for _, p in batch.ready:
            observe(max(done - p.append_ms, 0) / 1000.0)
        for (topic, outcome), n in outcomes.items():
            self.metrics.events_total.labels(topic=topic, outcome=outcome).inc(n)

    async def _redis(self, op: Callable[[], Awaitable[T]]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(self.settings.redis_timeout_s):
                return await op()

        return await with_retry(
            bounded,
            operation="redis",
            transient=REDIS_TRANSIENT,
            retries_total=self.metrics.retries_total,
            max_elapsed_s=self.settings.redis_retry_max_s,
            on_failing=self._set_redis_failing,
        )

    async def _emit(self, result: ScriptResult) -> None:
        """Hand a script's outputs to the producer; acks are awaited off the apply path.

        The outputs are already safe in the Redis outbox, so the next batch need not wait for
        the broker: a background task awaits the acks, then drops the entry from the outbox.
        """
        if not result.outbox_entry:
            return
        acks = await self._queue_outputs(result.outputs)
        task = asyncio.create_task(self._acknowledge(result, acks))
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def _acknowledge(self, result: ScriptResult, acks: list[asyncio.Future[Any]]) -> None:
        try:
            await asyncio.gather(*acks)
            await self._redis(partial(self.store.ack_outbox, result.group, [result.outbox_entry]))
        except KAFKA_TRANSIENT as exc:
            # Left in the outbox: the re-drive timer sends it again with the same ids.
            log.warning("output send failed, left for re-drive: %s", exc)

    async def wait_acks(self) -> None:
        """Wait for outputs handed to the producer to be acknowledged."""
        if self._acking:
            await asyncio.gather(*list(self._acking), return_exceptions=True)

    async def _send_outputs(self, encoded: bytes) -> None:
        await asyncio.gather(*await self._queue_outputs(encoded))

    async def _queue_outputs(self, encoded: bytes) -> list[asyncio.Future[Any]]:
        futures = []
        for output in decode_outputs(encoded):
            msg = format_output(output, self.rules.tier_rank)
            if msg.kind == "handoff":
                topic = self.settings.topic_handoffs
                self.metrics.handoffs_total.labels(tier=msg.new_tier).inc()
            else:
                topic = self.settings.topic_tier_changes
                self.metrics.tier_changes_total.labels(
                    direction=msg.direction, tier=msg.new_tier
                ).inc()
            futures.append(await self.producer.send(topic, msg.value, key=msg.key))
        return futures

    async def _dead_letter(
        self, rejected: list[tuple[TopicPartition, Any, InvalidEvent]], now: int
    ) -> None:
        futures = []
        for tp, m, exc in rejected:
            log.warning(
                "dead-lettering %s[%d]@%d: %s: %s",
                tp.topic,
                tp.partition,
                m.offset,
                exc.reason,
                exc.detail,
            )
            original, detail = m.value, exc.detail
            if original is not None and len(original) > self.limits.max_event_bytes:
                # Keep the dead letter itself under the broker's message size limit.
                original = original[: self.limits.max_event_bytes]
                detail = f"{detail}; original truncated to {len(original)} bytes"
            record = dead_letter_record(
                original, exc.reason, detail, tp.topic, tp.partition, m.offset, now
            )
            futures.append(
                await self.producer.send(self.settings.topic_dead_letter, record, key=m.key)
            )
            self.metrics.dead_letter_total.labels(reason=exc.reason).inc()
            self.metrics.events_total.labels(topic=tp.topic, outcome="rejected").inc()
        # The offset is committed only after the dead letter is safely on the broker.
        await asyncio.gather(*futures)

    async def _commit(
        self, consumer: AIOKafkaConsumer, only: set[TopicPartition] | None = None
    ) -> None:
        self._next_commit = time.monotonic() + self.settings.commit_interval_s
        if not self.redis_ok:
            return  # nothing new was applied while Redis was away
        offsets = {}
        for tp in only if only is not None else self.assigned:
            offset = self.aligner.commit_offset(tp)
            for batch in self._in_flight:
                first = batch.first_offsets.get(tp)
                if first is not None and (offset is None or first < offset):
                    offset = first
            if offset is not None:
                offsets[tp] = offset
        if not offsets:
            return
        try:
            # aiokafka retries retriable commit errors forever; bound it, the next commit
            # (or the next owner, helped by the store's recorded offsets) catches up.
            await asyncio.wait_for(consumer.commit(offsets), COMMIT_TIMEOUT_S)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance is under way; the next owner resumes from the last commit and the
            # store's recorded offsets make the replayed events no-ops.
            log.warning("commit skipped: %s", exc)
        except (TimeoutError, KafkaError) as exc:
            self.metrics.retries_total.labels(operation="kafka_commit").inc()
            log.warning("commit failed, will retry at the next interval: %r", exc)

    # ------------------------------------------------------------------ timers

    async def tick(self) -> int:
        """Apply inactivity tier drops that are due; returns the leads advanced."""
        now = now_ms()
        # While behind, judge "now" by the event time applied so far, so a replay does not drop
        # leads whose later events are still in the backlog.
        caught_up = self.aligner.caught_up() and not self._in_flight
        until = now if caught_up else min(now, self.stream_time_ms)
        if until <= 0:
            return 0
        advanced = 0
        async with self._lock:
            config = self.rules.script_config
            for group in range(self.store.keys.groups):
                result, n = await self._redis(
                    partial(
                        self.store.tick,
                        group,
                        config,
                        until,
                        self.settings.decay_tick_max_leads,
                        now,
                    )
                )
                advanced += n
                await self._emit(result)
        self.metrics.decay_due_leads.set(await self._redis(lambda: self.store.due_count(until)))
        return advanced

    async def redrive_outbox(self) -> int:
        """Re-send outputs recorded in Redis whose send was never acknowledged (e.g. a crash)."""
        older_than = now_ms() - int(self.settings.outbox_redrive_s * 1000)
        sent = 0
        async with self._lock:
            for group in range(self.store.keys.groups):
                entries = await self._redis(partial(self.store.pending_outbox, group, older_than))
                for entry_id, encoded in entries:
                    await self._send_outputs(encoded)
                    await self._redis(partial(self.store.ack_outbox, group, [entry_id]))
                    sent += 1
        self.metrics.outbox_pending.set(await self._redis(self.store.outbox_length))
        if sent:
            log.warning("re-sent %d outbox entries left by an earlier run", sent)
        return sent
