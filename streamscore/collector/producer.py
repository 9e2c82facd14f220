"""Durable sends: a request's events are answered for only after the broker acknowledged all."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from streamscore.collector.errors import CollectorStartError, Rejected
from streamscore.collector.routing import Record
from streamscore.config import Settings
from streamscore.events.types import TopicKind
from streamscore.metrics import CollectorMetrics
from streamscore.runtime.kafka import ensure_topics, security_kwargs
from streamscore.runtime.retry import with_retry
from streamscore.store.errors import Failure

log = logging.getLogger(__name__)

# Concurrent requests' records share produce requests: with 8 connections posting 100-event
# batches (benchmarks.collector_bench, embedded Tansu) 0 ms gave 8.6k events/s, 2 ms 16k, 5 ms
# 15k; a lone request waits 2 ms more.
LINGER_MS = 2


def topics_by_kind(settings: Settings) -> dict[TopicKind, str]:
    """The input topic of each kind (the inverse of Settings.topic_kinds)."""
    return {kind: topic for topic, kind in settings.topic_kinds.items()}


def _start_failure(exc: BaseException) -> Failure | None:
    """An unreachable broker is waited for (within the start budget); the rest is raised."""
    return Failure.TRANSIENT if isinstance(exc, KafkaConnectionError) else None


class DurableProducer:
    """An idempotent, acks=all producer whose send_all returns once every record is acked.

    Backpressure: events handed to the producer and not yet acked or failed are counted; a
    request that would take the count past collector_max_pending_events is refused at once
    with 429 (overloaded), unless nothing is pending, so a slow or absent broker cannot make
    the collector buffer without bound. A broker error, or no ack within
    collector_ack_timeout_s, is a 503.
    """

    def __init__(self, settings: Settings, metrics: CollectorMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.topics: Mapping[TopicKind, str] = topics_by_kind(settings)
        self.pending = 0
        self._failing = False
        self._producer: AIOKafkaProducer | None = None

    @property
    def ready(self) -> bool:
        """Whether the producer is connected (it then reconnects by itself after outages)."""
        return self._producer is not None

    async def start(self) -> None:
        """Connect and create missing topics, retrying an unreachable broker for a while."""
        try:
            await with_retry(
                self._start_once,
                operation="kafka_connect",
                classify=_start_failure,
                budget_s=self.settings.collector_start_timeout_s,
                on_retry=lambda operation: self.metrics.retries_total.labels(operation).inc(),
            )
        except KafkaError as exc:
            raise CollectorStartError(str(exc)) from exc
        self.metrics.ready.set(1)

    async def _start_once(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id="streamscore-collector",
            acks="all",
            enable_idempotence=self.settings.collector_idempotent_producer,
            linger_ms=LINGER_MS,
            # Records expire one ack timeout after their request was answered 503, so a retried
            # event is rarely written twice and stop() is not held by an absent broker for 40 s.
            request_timeout_ms=int(self.settings.collector_ack_timeout_s * 2000),
            max_batch_size=1024 * 1024,
            **security_kwargs(self.settings),
        )
        try:
            await producer.start()
        except KafkaConnectionError:
            await producer.stop()
            raise
        except KafkaError as exc:
            await producer.stop()
            hint = ""
            if self.settings.collector_idempotent_producer:
                hint = (
                    " (if the broker does not support idempotent producers, as Tansu 0.6 "
                    "does not for aiokafka, set collector_idempotent_producer=false)"
                )
            raise CollectorStartError(f"the producer cannot start: {exc!r}{hint}") from exc
        try:
            created = await ensure_topics(self.settings)
        except BaseException:
            await producer.stop()
            raise
        if created:
            log.info("created topics: %s", ", ".join(created))
        self._producer = producer

    async def stop(self) -> None:
        """Flush what is pending (bounded by the ack timeout) and close."""
        producer, self._producer = self._producer, None
        self.metrics.ready.set(0)
        if producer is not None:
            await producer.stop()

    async def send_all(self, records: Sequence[Record]) -> None:
        """Produce every record and wait for all acks; raises Rejected (429 or 503) otherwise."""
        producer = self._producer
        if producer is None:
            raise Rejected("broker_unavailable", "the collector is not connected to the broker")
        count = len(records)
        if not count:
            return
        limit = self.settings.collector_max_pending_events
        # A request is taken when nothing is pending, whatever its size: none can starve.
        if self.pending and self.pending + count > limit:
            raise Rejected(
                "overloaded", f"{self.pending} events await the broker's ack, limit {limit}"
            )
        self._add_pending(count)
        futures: list[asyncio.Future[object]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.collector_ack_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                for record in records:
                    future = await producer.send(
                        self.topics[record.topic_kind], record.value, key=record.key
                    )
                    future.add_done_callback(self._settled)
                    futures.append(future)
        except TimeoutError:
            raise self._unavailable("the broker did not take the events") from None
        except KafkaError as exc:
            raise self._unavailable(f"the broker refused the events: {exc}") from None
        finally:
            # Records never handed over are settled now; the others when their future is.
            self._add_pending(len(futures) - count)
        # asyncio.wait, not gather: a timeout must not cancel the producer's own futures.
        _, waiting = await asyncio.wait(futures, timeout=max(deadline - loop.time(), 0))
        if waiting:
            raise self._unavailable(
                f"{len(waiting)} of {count} events not acknowledged within "
                f"{self.settings.collector_ack_timeout_s:g}s"
            )
        for future in futures:
            error = future.exception()
            if error is not None:
                raise self._unavailable(f"the broker refused the events: {error}")
        if self._failing:
            self._failing = False
            log.warning("the broker acknowledges events again")
        self._count(records)

    def _unavailable(self, detail: str) -> Rejected:
        if not self._failing:  # once per outage, not once per request
            self._failing = True
            log.warning("answering 503 until the broker acknowledges events again: %s", detail)
        return Rejected("broker_unavailable", detail)

    def _settled(self, _: asyncio.Future[object]) -> None:
        self._add_pending(-1)

    def _add_pending(self, delta: int) -> None:
        self.pending += delta
        self.metrics.pending_events.set(self.pending)

    def _count(self, records: Sequence[Record]) -> None:
        by_label = Counter((record.type, record.topic_kind) for record in records)
        for (message_type, kind), n in by_label.items():
            self.metrics.events_total.labels(type=message_type, topic_kind=kind).inc(n)
        self.metrics.produced_bytes_total.inc(sum(len(record.value) for record in records))
