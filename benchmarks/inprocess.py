"""The worker's real scoring pipeline, driven in-process without Kafka (memory and stage phases).

`InProcessPipeline` builds the runtime's own LeadCache, live Lane, OffsetLedger and Pipeline on
a Redis store, so lead values, due sets and offsets are written exactly as the worker writes
them: one MGET per key group of misses, apply_event per event, one commit.lua call per key group
and batch. Only the broker is missing: outbox entries are acknowledged as soon as recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiokafka import TopicPartition

from streamscore.config import Settings
from streamscore.events import Event
from streamscore.runtime.emitter import Emitter
from streamscore.runtime.intake import Pending
from streamscore.runtime.lanes import LIVE, Lane
from streamscore.runtime.leads import LeadCache
from streamscore.runtime.ledger import OffsetLedger
from streamscore.runtime.pipeline import Pipeline
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.scorer import Scorer
from streamscore.runtime.sensors import Sensor
from streamscore.scoring.rules import CompiledRules
from streamscore.store.client import open_client
from streamscore.store.keys import KeySpace
from streamscore.store.outbox import Record, ScoredOutput
from streamscore.store.store import RedisStore

T = TypeVar("T")


async def _direct(op: Callable[[], Awaitable[T]]) -> T:
    # No retry policy: a benchmark against a local server fails loudly instead.
    return await op()


class FixedRules(RulesHolder):
    """Rules already compiled, never reloaded: the lane's holder without a file."""

    def __init__(self, rules: CompiledRules, dedup_window_s: int) -> None:  # no file to read
        self._dedup_window_ms = dedup_window_s * 1000
        self.rules = rules
        self._derive(rules)

    def reload_if_changed(self) -> bool:
        return False


class AckingEmitter(Emitter):
    """Counts outputs and deletes their outbox entry at once: there is no broker to send to."""

    def __init__(self) -> None:  # no super(): nothing is produced
        self.outputs = 0

    async def emit(
        self,
        lane: Lane,
        group: int,
        entry_id: str,
        outputs: Sequence[ScoredOutput],
        records: Sequence[Record] = (),
    ) -> None:
        self.outputs += len(outputs) + len(records)
        if entry_id:
            await lane.store.ack_outbox(group, [entry_id])


class InProcessPipeline:
    """Submit batches of events in merge order; the runtime's Pipeline scores and commits them."""

    def __init__(self, store: RedisStore, rules: CompiledRules, dedup_window_s: int) -> None:
        self.store = store
        self.rules = rules
        self.ledger: OffsetLedger[TopicPartition] = OffsetLedger()
        self.cache = LeadCache(store.keys, store, 10_000_000)
        self.lane = Lane(
            LIVE, store.keys, store, self.cache, None, {LIVE: FixedRules(rules, dedup_window_s)}
        )
        self.emitter = AckingEmitter()
        defaults = Settings()
        self.pipeline = Pipeline(
            [self.lane], self.ledger, self.emitter, Sensor(), _direct,
            Scorer(dedup_window_s * 1000, defaults.lead_story_max, defaults.topic_sla_breaches),
        )  # fmt: skip
        self._offsets: dict[TopicPartition, int] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, redis_url: str, prefix: str, rules: CompiledRules, dedup_window_s: int = 7 * 86400
    ) -> AsyncIterator[InProcessPipeline]:
        """A pipeline on its own key prefix (one key group), running until the block ends."""
        client = await open_client(redis_url, cluster=False)
        store = RedisStore(client, KeySpace(prefix))
        self = cls(store, rules, dedup_window_s)
        try:
            async with self.pipeline.running():
                yield self
                await self.pipeline.drain()
                self.pipeline.check()
        finally:
            await client.close()

    async def submit(self, events: Sequence[tuple[TopicPartition, Event]]) -> None:
        """Score one batch (events in the order given), each at the next offset of its tp."""
        ready: list[tuple[TopicPartition, Pending]] = []
        offsets = self._offsets
        for tp, ev in events:
            offset = offsets.get(tp, 0)
            offsets[tp] = offset + 1
            ready.append((tp, Pending(ev, offset, 0)))
        await self.pipeline.submit(ready)

    async def drain(self) -> None:
        """Wait until every submitted batch is committed."""
        await self.pipeline.drain()
        self.pipeline.check()


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """`items` cut into consecutive slices of `size`."""
    return [items[i : i + size] for i in range(0, len(items), size)]
