"""Live updates of the queue: the handoff topic, tailed once per console, fanned out over SSE.

Why the handoff topic and not polling the tier indexes: a handoff is the moment a sales rep
must act on, and the topic says exactly which lead and when, within the worker's emit latency;
the worker records a handoff in the same atomic commit as the lead's state and tier index, so
once it is on the topic the queue read right after shows it. Polling would cost every open page
one read of every index in every key group per period, and still not tell which lead handed off.
One consumer per console (no consumer group: it commits nothing and starts at the topic's end)
serves any number of pages. Tier changes and decay drops that hand nothing off reach an open
page by its periodic refresh (console_refresh_s), which also covers a broker the console cannot
reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from streamscore.config import Settings
from streamscore.runtime.kafka import security_kwargs

log = logging.getLogger(__name__)

#: Handoffs a slow page may fall behind by before it misses some (it refreshes anyway).
SUBSCRIBER_BUFFER: Final = 64
RETRY_S: Final = (1.0, 2.0, 5.0, 10.0, 30.0)
#: How long stop() lets the consumer finish connecting and close before cancelling it (a
#: consumer cancelled while it connects leaves its connection open).
STOP_WAIT_S: Final = 10.0
POLL_MS: Final = 500


@dataclass(frozen=True, slots=True)
class Handoff:
    """What a page needs to announce a handoff."""

    lead_id: str
    new_tier: str
    score: float
    grade: str
    event_time: str

    def to_json(self) -> bytes:
        """The SSE data line's JSON."""
        return orjson.dumps(
            {
                "lead_id": self.lead_id,
                "new_tier": self.new_tier,
                "score": self.score,
                "grade": self.grade,
                "event_time": self.event_time,
            }
        )


def parse_handoff(value: bytes | None) -> Handoff | None:
    """A handoff message (schemas/handoff.v1.json) as a Handoff; None if it is not one."""
    if value is None:
        return None
    try:
        doc: Any = orjson.loads(value)
        return Handoff(
            str(doc["lead_id"]),
            str(doc["new_tier"]),
            float(doc["score"]),
            str(doc["grade"]),
            str(doc["event_time"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class HandoffFeed:
    """Tails the handoff topic and hands each handoff to every subscribed page."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._subscribers: set[asyncio.Queue[Handoff | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        #: True while the consumer is connected (shown on the queue page).
        self.connected = False

    def subscribe(self) -> asyncio.Queue[Handoff | None]:
        """A queue of the handoffs from now on; None in it means the console is stopping."""
        queue: asyncio.Queue[Handoff | None] = asyncio.Queue(SUBSCRIBER_BUFFER)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Handoff | None]) -> None:
        """Stop handing handoffs to `queue`."""
        self._subscribers.discard(queue)

    def publish(self, handoff: Handoff) -> None:
        """Hand one handoff to every subscriber; a full one misses it (its refresh catches up)."""
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(handoff)

    def start(self) -> None:
        """Start tailing in the background."""
        self._task = asyncio.create_task(self._run(), name="console-handoff-feed")

    async def stop(self) -> None:
        """Stop tailing, and end every subscriber's stream."""
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_WAIT_S)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self._tail()
            except (KafkaError, OSError) as exc:
                self.connected = False
                delay = RETRY_S[min(attempt, len(RETRY_S) - 1)]
                attempt += 1
                log.warning("console: handoff topic unavailable (%r); retry in %.0f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def _tail(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            s.topic_handoffs,
            bootstrap_servers=s.kafka_bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            **security_kwargs(s),
        )
        try:
            # Inside the try: a stop that cancels the task while it connects still closes it.
            await consumer.start()
            self.connected = True
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=POLL_MS)
                for messages in batches.values():
                    for message in messages:
                        handoff = parse_handoff(message.value)
                        if handoff is not None:
                            self.publish(handoff)
        finally:
            self.connected = False
            await consumer.stop()
