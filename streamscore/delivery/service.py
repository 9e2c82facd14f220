"""The delivery service: consume the handoff topic, post each handoff to every webhook, commit.

At least once, deduplicable: a handoff's offset is committed only after it is delivered to
every webhook or, for a webhook that keeps failing, its dead letter is acknowledged by the
broker. The OffsetLedger (runtime/ledger.py) is the one owner of that rule: each fetched record
holds its offset until then, and the committed offset never passes a held one. A crash (even
SIGKILL) therefore redelivers every handoff not finished, with the same Idempotency-Key.

Handoffs are delivered concurrently (delivery_concurrency at once), so the order in which a
webhook receives them is not the topic's order, not even for one lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import fastjsonschema
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord

from streamscore.config import Settings
from streamscore.delivery.deadletter import delivery_dead_letter
from streamscore.delivery.metrics import DeliverySensor
from streamscore.delivery.policy import RetryPolicy
from streamscore.delivery.slack import slack_message
from streamscore.delivery.webhook import Result, Webhook, WebhookSender
from streamscore.errors import StreamscoreError
from streamscore.events.schemas import compile_schema
from streamscore.runtime.kafka import ensure_topics, make_producer, security_kwargs
from streamscore.runtime.ledger import Hold, OffsetLedger

log = logging.getLogger(__name__)

HANDOFF_SCHEMA_FILE: Final = "handoff.v1.json"
#: A handoff_id is sent as the Idempotency-Key header: visible ASCII only (the schema allows
#: any string; the worker's ids are hex), or the HTTP client would refuse the request.
_HEADER_SAFE: Final = re.compile(r"[\x21-\x7e]+")
#: How long one fetch waits for records, and the longest gap between two polls when full.
FETCH_TIMEOUT_MS: Final = 100
COMMIT_TIMEOUT_S: Final = 5.0
#: At a stop, deliveries in flight may finish for this long; the rest are redelivered later.
STOP_GRACE_S: Final = 5.0
#: At a rebalance, deliveries of revoked partitions may finish for this long before they are
#: cancelled (and redelivered by the partition's next owner).
REVOKE_GRACE_S: Final = 1.0
DEAD_LETTER_ATTEMPTS: Final = 5


class DeliveryError(StreamscoreError):
    """Delivery cannot go on (a dead letter not sent, no broker); unfinished offsets stay held."""


class InvalidHandoff(StreamscoreError):
    """A record on the handoff topic is not a handoff: not JSON, or not schemas/handoff.v1."""


def read_handoff(value: bytes | None, validate: Callable[[Any], Any]) -> dict[str, Any]:
    """The handoff in a record's value; raises InvalidHandoff saying why it is not one."""
    if value is None:
        raise InvalidHandoff("a tombstone (null value)")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidHandoff(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidHandoff(f"not a JSON object but {type(doc).__name__}")
    try:
        validate(doc)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise InvalidHandoff(f"not a streamscore.handoff.v1: {exc.message}") from None
    if not _HEADER_SAFE.fullmatch(doc["handoff_id"]):
        raise InvalidHandoff("handoff_id is not visible ASCII, so not usable as Idempotency-Key")
    return doc


def make_delivery_consumer(
    settings: Settings, listener: ConsumerRebalanceListener
) -> AIOKafkaConsumer:
    """A consumer of the handoff topic in the delivery group, committing only by hand."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.delivery_consumer_group,
        client_id="streamscore-delivery",
        enable_auto_commit=False,
        # A new group delivers the handoffs the topic still holds rather than skip them;
        # to start at the end instead, reset the group's offsets before the first start.
        auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 6, 100),
        rebalance_timeout_ms=settings.kafka_session_timeout_ms,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        **security_kwargs(settings),
    )
    consumer.subscribe([settings.topic_handoffs], listener=listener)
    return consumer


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: DeliveryService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._service.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._service.on_assigned(assigned)


class _Job:
    """One record being delivered: where it came from and the hold on its offset."""

    __slots__ = ("hold", "offset", "tp")

    def __init__(self, tp: TopicPartition, offset: int, hold: Hold[TopicPartition]) -> None:
        self.tp = tp
        self.offset = offset
        self.hold = hold


class DeliveryService:
    """Consumes handoffs and delivers each to every webhook, at least once."""

    def __init__(
        self,
        settings: Settings,
        sensor: DeliverySensor,
        *,
        rand: Callable[[], float] = random.random,
    ) -> None:
        secret = settings.delivery_signing_secret
        if not settings.delivery_webhook_urls or secret is None:
            raise ValueError("DeliveryService needs webhooks and a signing secret")
        self.settings = settings
        self.sensor = sensor
        self.webhooks = [
            Webhook.at(i, url.get_secret_value())
            for i, url in enumerate(settings.delivery_webhook_urls)
        ]
        self._secret = secret.get_secret_value()
        self._rand = rand
        self.policy = RetryPolicy(
            settings.delivery_attempts, settings.delivery_backoff_s, settings.delivery_backoff_max_s
        )
        self.ledger: OffsetLedger[TopicPartition] = OffsetLedger()
        self.assigned: set[TopicPartition] = set()
        self.consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._sender: WebhookSender | None = None
        self._validate = compile_schema(HANDOFF_SCHEMA_FILE)
        self._jobs: dict[asyncio.Task[None], _Job] = {}
        self._slots = asyncio.Semaphore(settings.delivery_concurrency)
        self._failure: BaseException | None = None
        self._next_commit = 0.0

    @property
    def ready(self) -> bool:
        """Consuming: partitions of the handoff topic assigned, and no failure."""
        return self.consumer is not None and bool(self.assigned) and self._failure is None

    def describe(self) -> dict[str, Any]:
        """State for /readyz."""
        return {
            "partitions_assigned": len(self.assigned),
            "in_flight": len(self._jobs),
            "webhooks": [w.ref.describe() for w in self.webhooks],
        }

    # ------------------------------------------------------------------ the loop

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set (or a dead letter cannot be sent), then commit."""
        settings = self.settings
        created = await ensure_topics(settings)
        if created:
            log.info("created topics: %s", ", ".join(created))
        producer = self._producer = make_producer(settings)
        await producer.start()
        # One connection per concurrent request; keep-alive spares a TLS handshake per post.
        connector = aiohttp.TCPConnector(limit=settings.delivery_concurrency * len(self.webhooks))
        session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
        self._sender = WebhookSender(
            session, self._secret, self.policy, settings.delivery_timeout_s, self.sensor,
            rand=self._rand,
        )  # fmt: skip
        consumer = make_delivery_consumer(settings, _Rebalance(self))
        try:
            await consumer.start()
            self.consumer = consumer
            while not stopping.is_set():
                if self._failure is not None:
                    raise self._failure
                await self._step(consumer)
        finally:
            await self._finish(consumer)
            await session.close()
            await producer.stop()

    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        free = self.settings.delivery_concurrency - len(self._jobs)
        if free <= 0:
            # Full: wait for a slot, but keep calling getmany (on paused partitions), or the
            # group would count this member as stuck after max_poll_interval_ms and take its
            # partitions away while deliveries retry.
            consumer.pause(*consumer.assignment())
            await asyncio.wait(
                list(self._jobs),
                timeout=FETCH_TIMEOUT_MS / 1000,
                return_when=asyncio.FIRST_COMPLETED,
            )
            records = await consumer.getmany(timeout_ms=0, max_records=1)
        else:
            if consumer.paused():
                consumer.resume(*consumer.paused())
            records = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=free)
        for tp, messages in records.items():
            if tp not in self.assigned:  # revoked while the fetch was under way
                continue
            for message in messages:
                self._start(tp, message)
            self.ledger.fetched(tp, messages[-1].offset + 1)
        if time.monotonic() >= self._next_commit:
            await self._commit(consumer, self.assigned)

    def _start(self, tp: TopicPartition, message: ConsumerRecord[bytes, bytes]) -> None:
        # The hold is taken before the task runs: no commit can pass this offset until the
        # task releases it, whatever the task does.
        job = _Job(tp, message.offset, self.ledger.hold({tp: message.offset}))
        task = asyncio.create_task(
            self._deliver(tp, message), name=f"deliver-{tp}-{message.offset}"
        )
        self._jobs[task] = job
        task.add_done_callback(self._done)
        self.sensor.in_flight(len(self._jobs))

    def _done(self, task: asyncio.Task[None]) -> None:
        job = self._jobs.pop(task)
        self.sensor.in_flight(len(self._jobs))
        if task.cancelled():
            return  # stop or revoke: the hold stays until on_revoked drops it, or the process ends
        exc = task.exception()
        if exc is not None:
            log.error("delivery of %s@%d failed: %r", job.tp, job.offset, exc)
            if self._failure is None:
                self._failure = exc
            return  # the hold stays: this offset is never committed by this process
        self.ledger.release(job.hold)

    async def _finish(self, consumer: AIOKafkaConsumer) -> None:
        """Let deliveries in flight end (up to a grace), commit what is done, leave the group."""
        try:
            if self._jobs:
                await asyncio.wait(list(self._jobs), timeout=STOP_GRACE_S)
            await self._cancel(list(self._jobs))
            if self.consumer is not None:
                await self._commit(consumer, self.assigned)
        finally:
            self.assigned.clear()
            self.sensor.readiness(False)
            self.consumer = None
            await consumer.stop()

    async def _cancel(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _commit(self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition]) -> None:
        self._next_commit = time.monotonic() + self.settings.commit_interval_s
        offsets = self.ledger.to_commit(partitions, lambda tp: None)
        if not offsets:
            return
        try:
            await asyncio.wait_for(consumer.commit(offsets), COMMIT_TIMEOUT_S)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance is under way: the next owner redelivers from the last commit.
            log.warning("commit skipped: %s", exc)
        except (TimeoutError, KafkaError) as exc:
            log.warning("commit failed, will retry at the next interval: %r", exc)
        else:
            self.ledger.committed(offsets)

    # ------------------------------------------------------------------ one record

    async def _deliver(self, tp: TopicPartition, message: ConsumerRecord[bytes, bytes]) -> None:
        async with self._slots:
            try:
                handoff = read_handoff(message.value, self._validate)
            except InvalidHandoff as exc:
                log.warning(
                    "%s[%d]@%d is not a handoff, dead-lettering it: %s",
                    tp.topic, tp.partition, message.offset, exc,
                )  # fmt: skip
                letter = delivery_dead_letter(
                    reason="invalid_handoff", detail=str(exc), topic=tp.topic,
                    partition=tp.partition, offset=message.offset, failed_at_ms=_now_ms(),
                    handoff=None, original=message.value,
                )  # fmt: skip
                await self._dead_letter(message.key, [("invalid_handoff", letter)])
                return
            raw: bytes = message.value  # read_handoff refused a tombstone
            # JSON: the record's bytes as they are, so the signature covers what was produced.
            body = (
                raw
                if self.settings.delivery_format == "json"
                else orjson.dumps(slack_message(handoff))
            )
            assert self._sender is not None
            sender = self._sender
            handoff_id: str = handoff["handoff_id"]
            results = await asyncio.gather(
                *(sender.deliver(w, body, handoff_id) for w in self.webhooks)
            )
            letters = [
                (r.reason or "rejected", self._failure_letter(tp, message.offset, handoff, r))
                for r in results
                if not r.delivered
            ]
            if letters:
                await self._dead_letter(message.key, letters)

    def _failure_letter(
        self, tp: TopicPartition, offset: int, handoff: dict[str, Any], result: Result
    ) -> bytes:
        last = result.last
        log.warning(
            "handoff %s to webhook %d (%s) failed after %d attempt(s): %s (%s); dead-lettering it",
            handoff["handoff_id"], result.webhook.index, result.webhook.redacted,
            result.attempts, result.reason, last.detail,
        )  # fmt: skip
        return delivery_dead_letter(
            reason=result.reason or "rejected", detail=last.detail, topic=tp.topic,
            partition=tp.partition, offset=offset, failed_at_ms=_now_ms(), handoff=handoff,
            webhook=result.webhook, outcome=last.outcome.value, status=last.status,
            attempts=result.attempts, response_excerpt=last.response_excerpt,
        )  # fmt: skip

    async def _dead_letter(self, key: bytes | None, letters: list[tuple[str, bytes]]) -> None:
        """Send dead letters and return once the broker has every one (acks=all)."""
        assert self._producer is not None
        topic = self.settings.topic_delivery_dead_letter
        for attempt in range(1, DEAD_LETTER_ATTEMPTS + 1):
            try:
                futures = [await self._producer.send(topic, value, key=key) for _, value in letters]
                await asyncio.gather(*futures)
                break
            except KafkaError as exc:
                if attempt == DEAD_LETTER_ATTEMPTS or not exc.retriable:
                    raise DeliveryError(f"delivery dead letter not sent: {exc!r}") from exc
                log.warning("dead-letter send failed (attempt %d), retrying: %r", attempt, exc)
                await asyncio.sleep(0.1 * 2**attempt)
        for reason, _ in letters:
            self.sensor.dead_lettered(reason)

    # ------------------------------------------------------------------ ownership

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start tracking newly assigned partitions."""
        self.assigned |= assigned
        self.sensor.readiness(self.ready)
        log.info("assigned %d partition(s) of the handoff topic", len(assigned))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what is done, end the revoked partitions' deliveries, forget them."""
        revoked = revoked & self.assigned
        if not revoked:
            return
        tasks = [t for t, job in self._jobs.items() if job.tp in revoked]
        if tasks:
            await asyncio.wait(tasks, timeout=REVOKE_GRACE_S)
        cancelled = [(t, self._jobs[t].hold) for t in tasks if not t.done()]
        await self._cancel([t for t, _ in cancelled])
        if self.consumer is not None:
            await self._commit(self.consumer, revoked)
        self.ledger.forget(revoked)
        for _, hold in cancelled:
            # Forgotten partitions only: releasing cannot move any other offset forward.
            with contextlib.suppress(ValueError):
                self.ledger.release(hold)
        self.assigned -= revoked
        self.sensor.readiness(self.ready)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
