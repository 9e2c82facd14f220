"""Intake: a fetched batch becomes valid events for the aligner and dead letters for the rest.

A dead letter is part of the exactly-once promise: the rejected message's offset may only be
committed once its dead letter is on the broker. Sends are retried; when they still fail the
error propagates and the process stops with that offset uncommitted, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streamscore.config import Settings
from streamscore.errors import InvalidEvent
from streamscore.events import Event, Limits, parse_event
from streamscore.events.accounts import AccountRecord, parse_account
from streamscore.events.deadletter import dead_letter_record
from streamscore.events.identity import IdentityRecord, parse_identity
from streamscore.events.types import TopicKind
from streamscore.outcomes.events import Outcome, parse_outcome
from streamscore.runtime.kafka import DEAD_LETTER_MAX_BYTES
from streamscore.runtime.sensors import Sensor
from streamscore.runtime.tracking import TrackScreen

log = logging.getLogger(__name__)

#: Messages parsed between two yields to the event loop, so a large fetch does not keep the
#: apply stage from reading Redis's reply (and sending the next batch).
YIELD_EVERY = 256
#: Attempts at sending one round of dead letters before the worker gives up and stops.
DEAD_LETTER_ATTEMPTS = 5


class Pending(NamedTuple):
    """A valid record waiting in the aligner, with its source offset and broker append time.

    A record is a scoring event, a sales outcome or an identity record: all have their id,
    lead id, type and time in their first four fields, which is all the aligner and the
    pipeline's dispatch read.
    """

    event: Event | Outcome | IdentityRecord | AccountRecord
    offset: int
    append_ms: int


class Rejected(NamedTuple):
    """An input message that cannot be scored, with where it came from and why."""

    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes | None
    error: InvalidEvent


async def parse_fetched(
    records: Mapping[TopicPartition, Sequence[Any]],
    kinds: Mapping[str, TopicKind],
    limits: Limits,
    now_ms: int,
    track: TrackScreen | None = None,
    identity_topic: str | None = None,
    account_topic: str | None = None,
) -> tuple[list[tuple[TopicPartition, list[Pending]]], list[Rejected]]:
    """Parse every fetched message: valid ones per partition (in offset order), and rejects.

    A topic missing from `kinds` is the outcomes topic: its messages are sales outcomes.
    `track` judges the custom track topic's events by name: kept, dropped, or rejected.
    `identity_topic`'s messages are identity merge records (events/identity.py), and
    `account_topic`'s account contributions (events/accounts.py).
    """
    valid_by_tp: list[tuple[TopicPartition, list[Pending]]] = []
    rejected: list[Rejected] = []
    parsed = 0
    for tp, messages in records.items():
        kind = kinds.get(tp.topic)  # None: the outcomes topic
        screen = track if track is not None and tp.topic == track.topic else None
        valid = []
        for m in messages:
            try:
                if tp.topic == identity_topic:
                    valid.append(Pending(parse_identity(m.value), m.offset, m.timestamp))
                    continue
                if tp.topic == account_topic:
                    valid.append(Pending(parse_account(m.value), m.offset, m.timestamp))
                    continue
                if kind is None:
                    valid.append(
                        Pending(parse_outcome(m.value, now_ms, limits), m.offset, m.timestamp)
                    )
                    continue
                event = parse_event(m.value, kind, now_ms, limits)
                if screen is None or screen.keep(event):
                    valid.append(Pending(event, m.offset, m.timestamp))
            except InvalidEvent as exc:
                rejected.append(Rejected(tp, m.offset, m.key, m.value, exc))
            parsed += 1
            if parsed % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        valid_by_tp.append((tp, valid))
    if track is not None:
        track.flush()
    return valid_by_tp, rejected


class DeadLetterSender:
    """Sends dead letters and waits until the broker has every one of them."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer, sensor: Sensor) -> None:
        self._topic = settings.topic_dead_letter
        self._producer = producer
        self._sensor = sensor

    async def send(self, rejected: Sequence[Rejected], now_ms: int) -> None:
        """Send one dead letter per rejected message; return once all are acknowledged."""
        records = []
        for r in rejected:
            log.warning(
                "dead-lettering %s[%d]@%d: %s: %s",
                r.tp.topic, r.tp.partition, r.offset, r.error.reason, r.error.detail,
            )  # fmt: skip
            value = dead_letter_record(
                r.value, r.error.reason, r.error.detail, r.tp.topic, r.tp.partition, r.offset,
                now_ms, DEAD_LETTER_MAX_BYTES,
            )  # fmt: skip
            records.append((r.key, value))
        for attempt in range(1, DEAD_LETTER_ATTEMPTS + 1):
            try:
                futures = [
                    await self._producer.send(self._topic, value, key=key) for key, value in records
                ]
                await asyncio.gather(*futures)
                break
            except KafkaError as exc:
                if attempt == DEAD_LETTER_ATTEMPTS or not exc.retriable:
                    # Raised with the offsets still held: nothing past them is committed.
                    log.error("dead-letter send failed, stopping: %r", exc)
                    raise
                self._sensor.retried("kafka_produce")
                log.warning("dead-letter send failed (attempt %d), retrying: %r", attempt, exc)
                await asyncio.sleep(0.1 * 2**attempt)
        for r in rejected:
            self._sensor.dead_lettered(r.tp.topic, r.error.reason)
