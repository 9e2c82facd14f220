"""Emitter: outputs recorded in the Redis outbox go to their topics; acknowledged ones leave it.

An output is recorded in the outbox by the same atomic call that changed the lead, so it is
safe before it is sent. The emitter hands it to the producer without waiting (the next batch
need not wait for the broker), awaits the acknowledgement in the background, and only then
deletes the outbox entry. Whatever is left behind (a crash, a send that failed) is re-sent by
`redrive` with its original, deterministic ids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streamscore.events.outputs import format_output
from streamscore.runtime.lanes import Lane
from streamscore.runtime.sensors import Sensor
from streamscore.store.outbox import Record, ScoredOutput, decode_entry

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Runs one Redis operation with the runtime's retry and time bound.
RedisCall = Callable[[Callable[[], Awaitable[T]]], Awaitable[T]]


class Emitter:
    """Produces outputs, acknowledges them in the outbox, and re-drives what was left there."""

    def __init__(self, producer: AIOKafkaProducer, sensor: Sensor, redis: RedisCall[Any]) -> None:
        self._producer = producer
        self._sensor = sensor
        self._redis = redis
        self._acking: set[asyncio.Task[None]] = set()

    async def emit(
        self,
        lane: Lane,
        group: int,
        entry_id: str,
        outputs: Sequence[ScoredOutput],
        records: Sequence[Record] = (),
    ) -> None:
        """Hand one outbox entry to the producer; its acks are awaited off this path."""
        if not entry_id:
            return
        acks = await self._produce(lane, outputs, records)
        task = asyncio.create_task(self._acknowledge(lane, group, entry_id, acks))
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def wait_acks(self) -> None:
        """Wait until every output handed to the producer is acknowledged (or failed)."""
        if self._acking:
            await asyncio.gather(*list(self._acking), return_exceptions=True)

    async def redrive(self, lanes: Sequence[Lane], older_than_ms: int) -> int:
        """Re-send outbox entries recorded before `older_than_ms`, in every lane; how many."""
        sent = 0
        pending = 0
        for lane in lanes:
            store = lane.store
            for group in range(store.keys.groups):
                entries = await self._redis(partial(store.pending_outbox, group, older_than_ms))
                for entry_id, encoded in entries:
                    await asyncio.gather(*await self._produce(lane, *decode_entry(encoded)))
                    await self._redis(partial(store.ack_outbox, group, [entry_id]))
                    sent += 1
            pending += await self._redis(store.outbox_length)
        self._sensor.outbox_pending(pending)
        if sent:
            log.warning("re-sent %d outbox entries left by an earlier run", sent)
        return sent

    async def _produce(
        self, lane: Lane, outputs: Sequence[ScoredOutput], records: Sequence[Record] = ()
    ) -> list[asyncio.Future[Any]]:
        topics = lane.topics
        futures: list[asyncio.Future[Any]] = []
        if topics is None:
            return futures  # a replay without output topics: recorded, acknowledged, dropped
        for output in outputs:
            model = lane.model_for(output.output.lead_id)
            msg = format_output(output, lane.holders[model.name].tier_rank)
            topic = topics.handoffs if msg.kind == "handoff" else topics.tier_changes
            futures.append(await self._producer.send(topic, msg.value, key=msg.key))
            self._sensor.output_emitted(msg.kind, msg.new_tier, msg.direction, model.name)
        for record in records:
            # Records name their topic for the live lane; a shadow lane's SLA breaches go to
            # its own topic, never to sales'.
            topic = topics.sla_breaches if lane.shadow else record.topic
            futures.append(await self._producer.send(topic, record.value, key=record.key))
        return futures

    async def _acknowledge(
        self, lane: Lane, group: int, entry_id: str, acks: list[asyncio.Future[Any]]
    ) -> None:
        try:
            await asyncio.gather(*acks)
        except KafkaError as exc:
            # Left in the outbox: the re-drive timer sends it again with the same ids.
            log.warning("output send failed, left in the outbox for re-drive: %r", exc)
            return
        await self._redis(partial(lane.store.ack_outbox, group, [entry_id]))
