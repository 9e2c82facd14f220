"""The scoring worker: fetch, parse, align, decide, apply in Redis, emit, commit; one loop.

Each piece lives in its own module: intake (parsing, dead letters), aligner (event-time merge),
partitions (ownership, lag, flow control), pipeline (decide and apply, two stages), ledger (the
committable offsets), emitter (outputs), tick (inactivity), guard (Redis calls), sensors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from streamscore.config import Settings
from streamscore.events import Limits
from streamscore.outcomes.kpi import compute_kpis
from streamscore.runtime.aligner import Aligner
from streamscore.runtime.clock import now_ms
from streamscore.runtime.emitter import Emitter
from streamscore.runtime.guard import RedisGuard
from streamscore.runtime.intake import DeadLetterSender, Pending, Rejected, parse_fetched
from streamscore.runtime.kafka import make_consumer
from streamscore.runtime.lanes import LIVE, build_lanes
from streamscore.runtime.ledger import OffsetLedger
from streamscore.runtime.partitions import Partitions
from streamscore.runtime.pipeline import Pipeline
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.scope import ReplayScope
from streamscore.runtime.scorer import Scorer
from streamscore.runtime.sensors import Sensor
from streamscore.runtime.tracking import TrackScreen
from streamscore.store.store import RedisStore

log = logging.getLogger(__name__)

COMMIT_TIMEOUT_S = 5.0


def _merge_key(p: Pending) -> tuple[int, str]:
    # (time, id): an Event's event_id and an Outcome's outcome_id are both field 0.
    record = p.event
    return (record.time_ms, record[0])


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
        sensor: Sensor,
        rules: RulesHolder,
        store: RedisStore,
        producer: AIOKafkaProducer,
        scope: ReplayScope | None = None,
    ) -> None:
        self.settings = settings
        #: Set for a replay: the history it rescores; None live.
        self.scope = scope
        self.sensor = sensor
        self.rules = rules
        self.store = store
        self.producer = producer
        self.limits = Limits.from_settings(settings)
        self.kinds = settings.topic_kinds
        self.guard = RedisGuard(settings, sensor, on_health=self._report_readiness)
        self.partitions = Partitions(settings.input_topics, sensor, scope)
        grace = settings.align_grace_ms
        self.aligner: Aligner[TopicPartition, Pending] = Aligner(
            _merge_key,
            _offset,
            settings.align_max_wait_ms,
            (lambda p: min(p.event.time_ms, p.append_ms) + grace) if grace else None,
        )
        self.ledger: OffsetLedger[TopicPartition] = OffsetLedger()
        self.dead_letters = DeadLetterSender(settings, producer, sensor)
        self.track = TrackScreen(settings.topic_track, settings.track_unknown, rules, sensor)
        self.emitter = Emitter(producer, sensor, self.guard)
        self.lanes = build_lanes(
            settings, sensor, rules, store,
            emit=scope is None or scope.emit, model=LIVE if scope is None else scope.model,
            cross_lead=scope is None,
        )  # fmt: skip
        sensor.models(name for lane in self.lanes for name in lane.holders)
        self.pipeline = Pipeline(
            self.lanes, self.ledger, self.emitter, sensor, self.guard,
            Scorer(
                settings.dedup_window_s * 1000, settings.lead_story_max,
                settings.topic_sla_breaches, settings.topic_identity,
                settings.topic_dead_letter, settings.identity_merge_known == "merge",
                settings.identity_max_links, settings.topic_account_updates,
                settings.topic_account_handoffs, settings.account_members_max,
            ),
        )  # fmt: skip
        self.consumer: AIOKafkaConsumer | None = None
        #: Kafka commits, rewinds and partition changes never interleave.
        self._lock = asyncio.Lock()
        self._holding = False
        self._assigned_pending: set[TopicPartition] = set()
        self._next_commit = 0.0
        self._next_tick = 0.0

    @property
    def ready(self) -> bool:
        """Partitions assigned, Redis answering, and the pipeline not stalled."""
        return (
            bool(self.partitions.assigned)
            and self.guard.ok
            and self.pipeline.stalled_s() < self.settings.watchdog_stall_s
        )

    def watchdog(self) -> float:
        """Say so, loudly, when work has been in flight without progress; the stall in s.

        Called by a timer that runs even while the loop is blocked: a worker waiting on Redis,
        the broker or a full queue is then visible in the log, in readiness and in a metric,
        instead of sitting silent.
        """
        stalled = self.pipeline.stalled_s()
        self.sensor.pipeline_stalled(stalled)
        self._report_readiness()
        if stalled >= self.settings.watchdog_stall_s:
            log.warning(
                "scoring has made no progress for %.0f s: %d batches in flight, Redis %s, "
                "last Redis error: %s",
                stalled, self.ledger.in_flight,
                self.guard.failing.value if self.guard.failing else "answering",
                self.guard.last_error or "none",
            )  # fmt: skip
        return stalled

    def _report_readiness(self) -> None:
        self.sensor.readiness(self.ready)

    # ------------------------------------------------------------------ the loop

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until `stopping` is set, then commit what was applied and leave the group."""
        consumer = self.consumer = make_consumer(self.settings, _Rebalance(self))
        await consumer.start()
        try:
            async with self.pipeline.running():
                while not stopping.is_set() and not self.finished():
                    self.pipeline.check()  # re-raises the apply stage's failure
                    await self.step(consumer)
                await self.pipeline.drain()
                await self.emitter.wait_acks()
        finally:
            try:
                async with self._lock:
                    await self._commit(consumer)
            finally:
                self.partitions.clear()
                self._report_readiness()
                await consumer.stop()
                self.consumer = None

    def finished(self) -> bool:
        """A replay's history is scored (live, never)."""
        return (
            self.scope is not None
            and self.scope.reached(self.partitions.positions)
            and not self.aligner.buffered()
            and self.pipeline.idle
        )

    async def step(self, consumer: AIOKafkaConsumer) -> int:
        """One fetch; hand what the aligner releases to the pipeline; returns its size."""
        settings = self.settings
        if self.pipeline.conflict is not None:
            await self._rewind(consumer)
        if self._assigned_pending:
            await self._load_assigned()
        records = await consumer.getmany(
            timeout_ms=settings.fetch_timeout_ms, max_records=settings.batch_max_events
        )
        scope = self.scope
        if scope is not None:
            records = scope.clip(records)  # what arrived after the replay started is not its own
        now = now_ms()
        valid, rejected = await parse_fetched(
            records,
            self.kinds,
            self.limits,
            now,
            self.track,
            settings.topic_identity,
            settings.topic_account_updates,
        )
        for tp, pending in valid:
            if tp in self.partitions.assigned:  # not revoked while it was parsed
                position = records[tp][-1].offset + 1
                self.partitions.positions[tp] = position
                self.ledger.fetched(tp, position)
                if scope is not None:
                    self.aligner.push(tp, [p for p in pending if scope.admits(p.event)])
                else:
                    self.aligner.push(tp, pending)
        if rejected:
            if scope is None:
                await self._dead_letter(rejected, now)
            else:
                scope.invalid += len(rejected)  # dead-lettered when the live worker met them
        for tp, position, highwater in await self.partitions.observe(consumer, self.aligner, now):
            await self.restart_partition(consumer, tp, position, highwater)
        ready = [] if self._holding else self.aligner.pop_ready(now, settings.batch_max_events)
        self.partitions.flow_control(consumer, self.aligner, settings.align_max_buffered)
        if ready:
            await self.pipeline.submit(ready)
        if time.monotonic() >= self._next_tick:
            await self.tick()
        if time.monotonic() >= self._next_commit:
            async with self._lock:
                await self._commit(consumer)
        return len(ready)

    async def _rewind(self, consumer: AIOKafkaConsumer) -> None:
        """After a commit conflict: void what is in flight, re-read Redis, seek back, go on."""
        await self.pipeline.drain()  # stage two discards the void batches
        async with self._lock:
            positions = {}
            for tp in self.partitions.assigned:
                offset = self.ledger.committable(tp, self.aligner.first_offset(tp))
                if offset is not None:
                    positions[tp] = offset
            log.warning(
                "rewinding %d partitions to their committable offsets after a commit conflict "
                "(%s): the cache is dropped and lead states are read from Redis again",
                len(positions), self.pipeline.conflict,
            )  # fmt: skip
            self.pipeline.reset()
            self.ledger.rewind(positions)
            now = now_ms()
            for tp, offset in positions.items():
                self.aligner.revoke([tp])
                self.aligner.assign([tp], now)
                consumer.seek(tp, offset)
                self.partitions.positions[tp] = offset
            await self.pipeline.load_offsets(self.partitions.assigned)

    async def _load_assigned(self) -> None:
        assigned, self._assigned_pending = self._assigned_pending, set()
        await self.pipeline.load_offsets(assigned & self.partitions.assigned)

    async def _dead_letter(self, rejected: list[Rejected], now: int) -> None:
        firsts: dict[TopicPartition, int] = {}
        for r in rejected:
            firsts[r.tp] = min(firsts.get(r.tp, r.offset), r.offset)
        hold = self.ledger.hold(firsts)
        await self.dead_letters.send(rejected, now)  # raises with the hold kept: no commit passes
        self.ledger.release(hold)

    async def _commit(
        self, consumer: AIOKafkaConsumer, only: set[TopicPartition] | None = None
    ) -> None:
        self._next_commit = time.monotonic() + self.settings.commit_interval_s
        partitions = self.partitions.assigned if only is None else only
        offsets = self.ledger.to_commit(partitions, self.aligner.first_offset)
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
            self.sensor.retried("kafka_commit")
            log.warning("commit failed, will retry at the next interval: %r", exc)
        else:
            self.ledger.committed(offsets)

    # ------------------------------------------------------------------ ownership

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start aligning newly assigned partitions; their applied offsets load before scoring."""
        self.partitions.assign(assigned)
        self.aligner.assign(assigned, now_ms())
        self._assigned_pending |= assigned
        self._report_readiness()
        log.info("assigned %d partitions", len(assigned))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish the batches in flight, commit what was applied, and forget the partitions."""
        self._holding = True
        try:
            await self.pipeline.drain()
        finally:
            self._holding = False
        async with self._lock:
            if self.consumer is not None:
                await self._commit(self.consumer, only=revoked)
            self.aligner.revoke(revoked)
            self.ledger.forget(revoked)
            self.partitions.revoke(revoked)
            self.pipeline.forget(revoked)
            self._assigned_pending -= revoked
        self._report_readiness()

    async def restart_partition(
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
        await self.pipeline.drain()
        async with self._lock:
            await self.guard(partial(self.store.forget_offsets, f"{tp.topic}:{tp.partition}"))
            self.pipeline.forget([tp])
            self.aligner.revoke([tp])
            self.aligner.assign([tp], now_ms())
            self.ledger.forget([tp])
            await consumer.seek_to_beginning(tp)
            self.partitions.positions[tp] = 0
            self.ledger.fetched(tp, 0)

    # ------------------------------------------------------------------ timers

    async def tick(self) -> int:
        """Apply the inactivity drops due in the partitions this worker owns; leads advanced.

        While behind (a backlog, a replay), "now" for a partition is the event time applied for
        it so far, not the wall clock: otherwise a replay would drop leads whose later events are
        still queued. Runs in the loop, between batches, so it sees the states they left.
        """
        self._next_tick = time.monotonic() + self.settings.decay_tick_s
        now = now_ms()
        # A replay never judges beyond its events' times: its state is history's, and two
        # replays of the same history end in the same state.
        caught_up = self.scope is None and self.aligner.caught_up() and self.pipeline.idle
        times = self.pipeline.partition_time_ms

        def until(partition: int) -> int:
            return now if caught_up else min(now, times.get(partition, 0))

        owned = {tp.partition for tp in self.partitions.assigned}
        advanced = await self.pipeline.submit_tick(
            sorted(owned), until, self.settings.decay_tick_max_leads
        )
        due = await self.guard(partial(self.store.due_count, owned, now))
        self.sensor.decay_due(due)
        return advanced

    async def redrive_outbox(self) -> int:
        """Re-send outputs recorded in Redis whose send was never acknowledged (e.g. a crash)."""
        older_than = now_ms() - int(self.settings.outbox_redrive_s * 1000)
        return await self.emitter.redrive(self.lanes, older_than)

    def reload_rules(self) -> None:
        """Re-read every rules file (live, A/B arms, shadows) that changed on disk."""
        for lane in self.lanes:
            lane.reload_rules()

    def reload_all_rules(self) -> None:
        """Re-read every rules file now (SIGHUP)."""
        self.rules.reload()
        for lane in self.lanes:
            for holder in lane.holders.values():
                if holder is not self.rules:
                    holder.reload()

    async def kpi_counters(self) -> dict[str, int]:
        """The KPI counters of every lane (model names keep them apart), summed over groups."""
        total: dict[str, int] = {}
        for lane in self.lanes:
            for name, n in (await self.guard(lane.store.kpi_counters)).items():
                total[name] = total.get(name, 0) + n
        return total

    async def refresh_kpis(self) -> None:
        """Read the KPI counters of every lane and hand the KPIs to the sensor."""
        tiers = [t.name for t in self.rules.rules.tiers]
        self.sensor.kpis(compute_kpis(await self.kpi_counters(), tiers))

    async def maintain(self) -> None:
        """Periodic upkeep: keep each tier index (the console's queue) to its best leads."""
        keep = self.settings.tier_index_max
        for lane in self.lanes:
            tiers = {t.name for model in lane.models for t in model.rules.tiers[1:]}
            for group in range(lane.keys.groups):
                for tier in sorted(tiers):
                    await self.guard(partial(lane.store.trim_tier_index, group, tier, keep))

    def describe(self) -> dict[str, Any]:
        """State for /readyz."""
        return {
            "partitions_assigned": len(self.partitions.assigned),
            "redis": self.guard.failing.value if self.guard.failing else "ok",
            "batches_in_flight": self.ledger.in_flight,
            "stalled_s": round(self.pipeline.stalled_s(), 1),
        }
