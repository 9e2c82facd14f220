"""The two-stage pipeline: batch N+1 is scored in memory while Redis commits batch N.

Stage one (`submit`, `submit_tick`) runs in the worker's loop: it loads the leads a batch
touches (one MGET per key group of misses), applies its events (or its inactivity drops) to
their cached states with the pure engine, and packs one commit call per key group, yielding to
the event loop every YIELD_EVERY events so that stage two can send the next call as soon as
Redis is free. A batch's offsets are held in the ledger from the moment it leaves the aligner.

Stage two (`_apply_loop`) sends the calls in order and releases a batch's hold once every call
of it is applied. A failed call is retried by the guard; one that fails for good ends the stage
with the batch still held, so no commit passes it. A conflict (another writer changed a lead or
an offset this worker was about to overwrite) voids every batch in flight: the worker rewinds
its consumer to the committable offsets, drops its cache and reads Redis again (`reset`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiokafka import TopicPartition

from streamscore.events.accounts import AccountRecord
from streamscore.events.identity import IdentityRecord
from streamscore.outcomes.events import Outcome
from streamscore.runtime.accounts import AccountCache
from streamscore.runtime.clock import now_ms
from streamscore.runtime.emitter import Emitter
from streamscore.runtime.intake import YIELD_EVERY, Pending
from streamscore.runtime.lanes import Lane
from streamscore.runtime.leads import (
    sets_a_lead_could_be_in,
    sorted_sets_of,
)
from streamscore.runtime.ledger import Hold, OffsetLedger
from streamscore.runtime.scorer import Facts, GroupWork, Scorer
from streamscore.runtime.sensors import Sensor
from streamscore.scoring.outputs import Output
from streamscore.store.client import PackedCall
from streamscore.store.codec import SeenMemo, encode_account, encode_lead
from streamscore.store.commit import (
    VALUE_PREFIX_BYTES,
    GroupCommit,
    LeadWrite,
    OffsetWrite,
    versioned,
)
from streamscore.store.forgotten import ForgottenLeads
from streamscore.store.outbox import Record, ScoredOutput, encode_outputs

log = logging.getLogger(__name__)

#: A lead keeping this many seen event ids or more keeps their packed form between writes: a
#: busy lead's hundreds of ids are then extended by the few of each batch, not packed again.
MEMO_SEEN_IDS = 32
#: Account states kept in memory (least recently used evicted).
ACCOUNT_CACHE_MAX = 100_000
RedisCall = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


class CommitConflict(Exception):
    """A commit call found a lead or an offset changed by another writer; nothing was written."""


@dataclass(slots=True)
class GroupCall:
    """One lane's and key group's packed commit call and what its outbox entry carries."""

    lane: Lane
    group: int
    packed: PackedCall
    outputs: list[Output]
    records: list[Record]


@dataclass(slots=True)
class Batch:
    """A scored batch on its way to Redis: one packed commit call per key group."""

    generation: int
    hold: Hold[TopicPartition] | None
    calls: list[GroupCall]
    outcomes: Tally[tuple[str, str]]
    append_ms: list[int]
    events: int
    partition_times: dict[int, int]
    facts: Facts


class Pipeline:
    """Scores batches against cached lead states and commits them to Redis, in order."""

    def __init__(
        self,
        lanes: list[Lane],
        ledger: OffsetLedger[TopicPartition],
        emitter: Emitter,
        sensor: Sensor,
        redis: RedisCall,
        scorer: Scorer,
    ) -> None:
        self.lanes = lanes
        self._ledger = ledger
        self._emitter = emitter
        self._sensor = sensor
        self._redis = redis
        self._scorer = scorer
        #: Accounts (scoring/accounts.py) of the account records the live lane applies.
        self._accounts = AccountCache(lanes[0].keys, lanes[0].store, ACCOUNT_CACHE_MAX)
        #: Input partition number -> latest event time committed, for ticks while behind.
        self.partition_time_ms: dict[int, int] = {}
        #: Set by stage two when a commit conflicts; the worker rewinds, then calls reset().
        self.conflict: str | None = None
        #: The forgotten sets as last read (None: read them before scoring). Every commit call
        #: is fenced on its group's size, so a forget since then voids the batch (a conflict).
        self.forgotten: ForgottenLeads | None = None
        self._generation = 0
        #: When stage two last finished a batch, or the pipeline was last seen empty.
        self._progress_s = time.monotonic()
        self._tp_names: dict[TopicPartition, str] = {}
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        self._deciding: asyncio.Future[None] | None = None
        self._applier: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

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
        """Nothing is being scored or committed."""
        return self._deciding is None and self._ledger.in_flight == 0 and self._queue.empty()

    async def drain(self) -> None:
        """Wait until every submitted batch is committed (or voided, or stage two died)."""
        if self._deciding is not None:
            await asyncio.shield(self._deciding)  # a batch still being scored goes first
        join = asyncio.ensure_future(self._queue.join())
        waits: set[asyncio.Future[None]] = {join}
        if self._applier is not None:
            waits.add(self._applier)
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        join.cancel()

    def stalled_s(self) -> float:
        """How long work has been in flight without a batch being committed (0 when idle)."""
        if self.idle:
            self._progress_s = time.monotonic()
            return 0.0
        return time.monotonic() - self._progress_s

    def reset(self) -> None:
        """Forget everything cached: batches in flight are void, Redis is read again."""
        self._generation += 1
        for lane in self.lanes:
            lane.cache.clear()
            lane.recorded.clear()
        self._accounts.clear()
        self.conflict = None
        self.forgotten = None

    async def load_offsets(self, partitions: Iterable[TopicPartition]) -> None:
        """Read the applied offsets of newly owned partitions from Redis, in every lane."""
        names = [self._tp_name(tp) for tp in partitions]
        for lane in self.lanes:
            lane.recorded.update(await self._redis(partial(lane.store.recorded_offsets, names)))

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop what is cached for partitions this worker no longer owns."""
        gone = set(partitions)
        names = {self._tp_name(tp) for tp in gone}
        numbers = {tp.partition for tp in gone}
        for lane in self.lanes:
            lane.recorded = {k: v for k, v in lane.recorded.items() if k[1] not in names}
            lane.cache.evict_partitions(numbers)
        self._accounts.clear()  # read again from Redis when next needed
        for number in numbers:
            self.partition_time_ms.pop(number, None)

    def _tp_name(self, tp: TopicPartition) -> str:
        name = self._tp_names.get(tp)
        if name is None:
            name = self._tp_names[tp] = f"{tp.topic}:{tp.partition}"
        return name

    # ------------------------------------------------------------------ stage one

    async def submit(self, ready: list[tuple[TopicPartition, Pending]]) -> None:
        """Score a batch the aligner released, in its merge order, in every lane; queue it."""
        # Each partition's first offset in the batch (reversed: the first occurrence wins).
        firsts = {tp: p.offset for tp, p in reversed(ready)}
        # Held from here on, so that a Kafka commit while it is scored never passes it.
        hold = self._ledger.hold(firsts)
        async with self._stage_one():
            generation = self._generation
            outcomes: Tally[tuple[str, str]] = Tally()
            facts = Facts()
            times: dict[int, int] = {}
            calls: list[GroupCall] = []
            forgotten = await self._forgotten()
            # None unless some lead was forgotten: the hot path pays one test per event.
            blocked = forgotten.blocks if forgotten else None
            for n, lane in enumerate(self.lanes):
                # The live lane's outcomes are the event counts; shadow lanes are not counted.
                counted = outcomes if n == 0 else Tally()
                calls += await self._score(lane, ready, firsts, counted, facts, times, blocked)
            batch = Batch(
                generation,
                hold,
                calls,
                outcomes,
                [p.append_ms for _, p in ready],
                len(ready),
                times,
                facts,
            )
            await self._enqueue(batch)

    async def _score(
        self,
        lane: Lane,
        ready: list[tuple[TopicPartition, Pending]],
        firsts: dict[TopicPartition, int],
        outcomes: Tally[tuple[str, str]],
        facts: Facts,
        times: dict[int, int],
        blocked: Callable[[str, int], bool] | None,
    ) -> list[GroupCall]:
        """Apply a batch's records to one lane's leads; its commit calls.

        Identity and account records (internal topics) are the live lane's: a lane without
        cross-lead effects (a shadow model, a replay) passes over them.
        """
        cache = lane.cache
        cross = lane.cross_lead
        accounts = self._accounts
        lead_ids = set()
        account_refs = set()
        for _, p in ready:
            record = p.event
            if isinstance(record, AccountRecord):
                if cross:
                    account_refs.add((*accounts.ref(record.account_id), record.account_id))
            elif cross or not isinstance(record, IdentityRecord):
                lead_ids.add(record.lead_id)
        await cache.load(lead_ids, self._redis)
        if account_refs:
            await accounts.load(account_refs, self._redis)
        leads = cache.by_id  # one lookup a record from here on
        # Redelivered records (at or below an offset Redis recorded) can only be in a
        # partition whose recorded offset reaches the batch's first one: a replay after a
        # rewind or a restart. Only those partitions are checked record by record.
        suspect = self._redelivered(lane, firsts)
        # One model for the whole lane unless an A/B experiment assigns each lead its arm's.
        fixed = lane.model_for("") if lane.experiment is None else None
        work: dict[int, GroupWork] = {}
        clocks: dict[int, int] = {}
        committed_times = self.partition_time_ms
        scorer = self._scorer
        tp_name = self._tp_name
        digest_of = lane.keys.digest_of
        for i, (tp, p) in enumerate(ready, 1):
            record = p.event
            if isinstance(record, AccountRecord):
                if not cross:
                    continue
                group, key = accounts.ref(record.account_id)
                if suspect and tp in suspect and self._applied(lane, group, tp, p.offset):
                    outcomes[(tp.topic, "duplicate")] += 1  # redelivered: already in Redis
                    continue
                w = work.get(group)
                if w is None:
                    w = work[group] = GroupWork()
                w.offsets[tp_name(tp)] = p.offset
                account = w.accounts[key] = accounts.get(key)
                rules = (fixed or lane.model_for(record.account_id)).rules
                scorer.account(account, record, w, rules, facts)
                outcomes[(tp.topic, "scored")] += 1
                continue
            if not cross and isinstance(record, IdentityRecord):
                continue
            lead = leads[record.lead_id]
            group = lead.group
            if suspect and tp in suspect and self._applied(lane, group, tp, p.offset):
                outcomes[(tp.topic, "duplicate")] += 1  # redelivered: already in Redis
                continue
            if blocked is not None and blocked(digest_of(lead.key), record.time_ms):
                # A forgotten lead's record from before the forget (late, redelivered or
                # replayed): dropped, so it cannot bring the lead back.
                outcomes[(tp.topic, "forgotten")] += 1
                continue
            w = work.get(group)
            if w is None:
                w = work[group] = GroupWork()
            w.offsets[tp_name(tp)] = p.offset
            lead.state.partition = partition = tp.partition
            w.leads[lead.key] = lead
            # The partition's event time so far: the SLA clock (as the tick's while behind).
            clock = clocks.get(partition, 0)
            if record.time_ms > clock:
                clock = clocks[partition] = record.time_ms
            clock = max(clock, committed_times.get(partition, 0))
            model = fixed or lane.model_for(record.lead_id)
            if isinstance(record, Outcome):
                scorer.outcome(lead, record, clock, w, model, facts)
                outcomes[(tp.topic, "scored")] += 1
            elif isinstance(record, IdentityRecord):
                source = (tp.topic, tp.partition, p.offset)
                scorer.identity(lead, record, source, clock, w, model, facts)
                outcomes[(tp.topic, "scored")] += 1
            else:
                fresh = scorer.event(lead, record, clock, w, model, facts)
                outcomes[(tp.topic, "scored" if fresh else "duplicate")] += 1
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        for partition, t in clocks.items():
            if t > times.get(partition, 0):
                times[partition] = t
        return self._pack(lane, work)

    def _redelivered(self, lane: Lane, firsts: dict[TopicPartition, int]) -> set[TopicPartition]:
        recorded = lane.recorded
        if not recorded:
            return set()
        out = set()
        for tp, first in firsts.items():
            name = self._tp_name(tp)
            for group in range(lane.keys.groups):
                applied = recorded.get((group, name))
                if applied is not None and applied >= first:
                    out.add(tp)
        return out

    def _applied(self, lane: Lane, group: int, tp: TopicPartition, offset: int) -> bool:
        applied = lane.recorded.get((group, self._tp_name(tp)))
        return applied is not None and offset <= applied

    async def submit_tick(
        self, partitions: Iterable[int], until_ms: Callable[[int], int], limit: int
    ) -> int:
        """Apply the inactivity drops and SLA breaches due in these partitions, in every lane;
        returns the leads advanced.

        `until_ms(partition)` is how far to advance that partition's leads: now, or the event
        time applied for it while the worker is behind.
        """
        owned = [(p, until_ms(p)) for p in partitions]
        async with self._stage_one():
            generation = self._generation
            await self._forgotten()
            facts = Facts()
            calls: list[GroupCall] = []
            advanced = 0
            for lane in self.lanes:
                refs: list[tuple[int, str]] = []
                limits: dict[str, int] = {}
                for partition, until in owned:
                    if until <= 0:
                        continue
                    for group in range(lane.keys.groups):
                        for sla in (False, True):
                            due = partial(lane.store.due_keys, group, partition, until, limit, sla)
                            for key in await self._redis(due):
                                if key not in limits:
                                    refs.append((group, key))
                                    limits[key] = until
                if not refs:
                    continue
                await lane.cache.load_keys(refs, self._redis)
                work: dict[int, GroupWork] = {}
                for group, key in refs:
                    if key not in lane.cache:
                        continue  # forgotten between reading the due set and loading it
                    w = work.get(group)
                    if w is None:
                        w = work[group] = GroupWork()
                    lead = w.leads[key] = lane.cache.get(key)
                    model = lane.model_for(lead.state.lead_id)
                    self._scorer.tick(lead, limits[key], w, model, facts)
                calls += self._pack(lane, work)
                advanced += len(refs)
            if not calls:
                return 0
            batch = Batch(generation, None, calls, Tally(), [], 0, {}, facts)
            await self._enqueue(batch)
            return advanced

    async def _forgotten(self) -> ForgottenLeads:
        """The forgotten sets, read once after a start or a reset (a forget since then makes a
        commit conflict, which resets)."""
        if self.forgotten is None:
            self.forgotten = await self._redis(self.lanes[0].store.forgotten_leads)
        return self.forgotten

    async def _enqueue(self, batch: Batch) -> None:
        """Hand a batch to stage two; raise stage two's error if it has died meanwhile.

        Waiting on the queue alone would wait forever once stage two has given up (the retry
        budget ran out): the worker would stall, neither applying nor exiting.
        """
        put = asyncio.ensure_future(self._queue.put(batch))
        waits: set[asyncio.Future[Any]] = {put}
        if self._applier is not None:
            waits.add(self._applier)
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            self.check()

    @contextlib.asynccontextmanager
    async def _stage_one(self) -> AsyncIterator[None]:
        deciding = self._deciding = asyncio.get_running_loop().create_future()
        try:
            yield
        finally:
            deciding.set_result(None)
            self._deciding = None

    def _pack(self, lane: Lane, work: dict[int, GroupWork]) -> list[GroupCall]:
        keys = lane.keys
        recorded = lane.recorded
        forgotten = self.forgotten
        calls = []
        for group, w in work.items():
            commit = GroupCommit(group, counters=w.counters)
            # Fenced on the forgotten set read before scoring: a forget since voids the batch.
            commit.forgotten_size = None if forgotten is None else forgotten.size(group)
            for name, new in w.offsets.items():
                commit.offsets.append(OffsetWrite(name, recorded.get((group, name)), new))
                recorded[(group, name)] = new
            writes = commit.leads
            for key, lead in w.leads.items():
                state = lead.state
                lead.version = version = lead.version + 1
                seen = state.seen
                memo = lead.seen_memo
                if memo is None and seen is not None and len(seen) >= MEMO_SEEN_IDS:
                    memo = lead.seen_memo = SeenMemo()
                # Encoded once per lead and batch, however many of its records the batch holds.
                value = version.to_bytes(VALUE_PREFIX_BYTES, "big") + encode_lead(state, memo)
                if state.tier == 0 and not state.funnel and lead.sets == {}:
                    # Most leads: in the first tier (no index, no drop ahead), no funnel (no
                    # SLA), and known to be in no sorted set.
                    writes.append(LeadWrite(key, lead.prefix, value))
                else:
                    rules = lane.model_for(state.lead_id).rules
                    want = sorted_sets_of(state, group, keys, rules)
                    could_be_in = (
                        sets_a_lead_could_be_in(state, group, keys, rules)
                        if lead.sets is None
                        else ()
                    )
                    adds, removes = lead.set_changes(want, could_be_in)
                    writes.append(LeadWrite(key, lead.prefix, value, adds, removes))
                lead.prefix = value[:VALUE_PREFIX_BYTES]
            for key, account in w.accounts.items():
                account.version += 1
                value = versioned(account.version, encode_account(account.state))
                writes.append(LeadWrite(key, account.prefix, value))
                account.prefix = value[:VALUE_PREFIX_BYTES]
            calls.append(GroupCall(lane, group, commit.pack(keys), w.outputs, w.records))
        return calls

    # ------------------------------------------------------------------ stage two

    async def _apply_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._queue.get()
            try:
                if batch.generation != self._generation or self.conflict is not None:
                    continue  # void: scored on states a conflict proved stale
                try:
                    await self._apply(batch)
                except CommitConflict as exc:
                    self.conflict = str(exc)
                    log.warning("commit conflict (%s): rewinding to the committed offsets", exc)
                    continue
            finally:
                self._queue.task_done()
            self._progress_s = time.monotonic()
            if batch.hold is not None:
                self._ledger.release(batch.hold)
            for partition, t in batch.partition_times.items():
                if t > self.partition_time_ms.get(partition, 0):
                    self.partition_time_ms[partition] = t
            # Counted on the loop's next turn, by when the next call has been sent: per-event
            # bookkeeping would otherwise leave Redis idle.
            if batch.events:
                loop.call_soon(
                    self._sensor.batch_applied, batch.outcomes, batch.append_ms, now_ms()
                )
                dropped = sum(
                    n for (_, outcome), n in batch.outcomes.items() if outcome == "forgotten"
                )
                if dropped:
                    self._sensor.edges_applied({("forgotten_dropped", ""): dropped})
            facts = batch.facts
            if facts.outcomes or facts.breaches:
                self._sensor.funnel_facts(facts.outcomes, facts.breaches)
            if facts.edges:
                self._sensor.edges_applied(facts.edges)

    async def _apply(self, batch: Batch) -> None:
        scored_at = now_ms()
        for call in batch.calls:
            started = time.perf_counter()
            encoded = encode_outputs(call.outputs, scored_at, call.records)
            result = await self._redis(partial(call.lane.store.commit, call.packed, encoded))
            self._sensor.redis_call("commit", time.perf_counter() - started)
            if not result.ok:
                raise CommitConflict(f"{call.lane.name} group {call.group}: {result.conflict}")
            if result.outbox_entry:
                scored = [ScoredOutput(o, scored_at) for o in call.outputs]
                await self._emitter.emit(
                    call.lane, call.group, result.outbox_entry, scored, call.records
                )
