"""Baseline (c), the practical limit: getmany, parse, decide, encode, one apply per batch.

No alignment, no outputs to Kafka, no commits, no metrics beyond what RedisStore.apply records.
Configured by STREAMSCORE_* variables; runs until SIGTERM.

With `--pipelined` (row c2, a what-if): the apply of batch N stays in flight while batch N+1 is
fetched, parsed and decided, so the Python work overlaps the Lua work in Redis. Applies are
still issued one at a time, in order, so per-partition order is unchanged.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiokafka import ConsumerRebalanceListener, TopicPartition
from streamscore.store.wire import GroupBatch, ScoredEvent, encode_batches

from streamscore.config import load_settings
from streamscore.errors import InvalidEvent
from streamscore.events import Limits, parse_event
from streamscore.runtime.clock import now_ms
from streamscore.runtime.kafka import make_consumer
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.sensors import Sensor
from streamscore.scoring.engine import decide
from streamscore.store.keys import KeySpace
from streamscore.store.store import RedisStore, connect


class _NoRebalanceHooks(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None


async def run(pipelined: bool) -> None:
    """Consume and apply until SIGTERM."""
    settings = load_settings()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    holder = RulesHolder(settings.rules_file, Sensor(), settings.dedup_window_s)
    rules, config = holder.rules, holder.script_config
    client = connect(settings.redis_url.get_secret_value())
    store = RedisStore(client, KeySpace(settings.redis_key_prefix, settings.redis_key_groups))
    limits = Limits.from_settings(settings)
    kinds = settings.topic_kinds
    consumer = make_consumer(settings, _NoRebalanceHooks())

    async def apply_all(batches: list[GroupBatch], now: int) -> None:
        for batch in batches:
            await store.apply(batch, config, now)

    inflight: asyncio.Task[None] | None = None
    await consumer.start()
    try:
        while not stopping.is_set():
            records = await consumer.getmany(
                timeout_ms=settings.fetch_timeout_ms, max_records=settings.batch_max_events
            )
            if not records:
                continue
            now = now_ms()
            scored = []
            for tp, messages in records.items():
                kind, topic, partition = kinds[tp.topic], tp.topic, tp.partition
                for m in messages:
                    try:
                        ev = parse_event(m.value, kind, now, limits)
                    except InvalidEvent:
                        continue
                    scored.append(
                        ScoredEvent(
                            ev.lead_id,
                            ev.event_id,
                            ev.time_ms,
                            topic,
                            partition,
                            m.offset,
                            decide(ev, rules),
                        )
                    )
            batches = encode_batches(scored, store.keys)
            if inflight is not None:
                await inflight
                inflight = None
            if pipelined:
                inflight = asyncio.create_task(apply_all(batches, now))
                # Let the task write its EVALSHA before this loop goes back to CPU-bound
                # parsing (getmany returns without suspending when records are buffered).
                for _ in range(3):
                    await asyncio.sleep(0)
            else:
                await apply_all(batches, now)
        if inflight is not None:
            await inflight
    finally:
        await consumer.stop()
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(run(pipelined="--pipelined" in sys.argv[1:]))
