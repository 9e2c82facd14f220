"""Kafka helpers: topic creation, fast producing of the workload, high watermarks, read-back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks.workload import Message as Record

PRODUCER_CONFIG = {
    "linger.ms": 20,
    "batch.num.messages": 10000,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "acks": "all",
    "log_level": 3,
}


def produce_all(
    bootstrap: str, topics: Sequence[str], records: Sequence[Record], *, event_time: bool = False
) -> tuple[dict[tuple[str, int], int], float]:
    """Send every record to its topic and partition; returns counts per partition and seconds.

    With `event_time`, each record's timestamp is its event's time (as a collector that stamps
    records with the event time would produce them): Quix Streams merges topics by it.
    """
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG})
    errors: list[str] = []
    acked: dict[tuple[str, int], int] = {}

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))
            return
        topic, partition = msg.topic(), msg.partition()
        if topic is None or partition is None:
            errors.append("delivery report without a topic or partition")
            return
        acked[(topic, partition)] = acked.get((topic, partition), 0) + 1

    started = time.perf_counter()
    produce = producer.produce
    for i, r in enumerate(records):
        while True:
            try:
                if event_time:
                    produce(
                        topics[r.topic],
                        r.value,
                        r.key,
                        partition=r.partition,
                        on_delivery=on_delivery,
                        timestamp=r.time_ms,
                    )
                else:
                    produce(
                        topics[r.topic],
                        r.value,
                        r.key,
                        partition=r.partition,
                        on_delivery=on_delivery,
                    )
                break
            except BufferError:
                producer.poll(0.01)
        if i % 2000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    if remaining or errors:
        raise RuntimeError(f"produce failed: {remaining} unsent, errors: {errors[:5]}")
    return acked, elapsed


async def fetch_highwaters(
    bootstrap: str, topics: Sequence[str], partitions: int, timeout_s: float = 30.0
) -> dict[tuple[str, int], int]:
    """The high watermark of every partition, as a fetch reports it.

    Tansu answers ListOffsets wrongly for multi-record batches, so end_offsets() is not used.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=200, max_records=1)
            if all(consumer.highwater(tp) is not None for tp in tps):
                break
        return {(tp.topic, tp.partition): consumer.highwater(tp) or 0 for tp in tps}
    finally:
        await consumer.stop()


def highwaters(
    bootstrap: str, topics: Sequence[str], partitions: int
) -> dict[tuple[str, int], int]:
    """Synchronous wrapper of fetch_highwaters."""
    return asyncio.run(fetch_highwaters(bootstrap, topics, partitions))


def create_topics(bootstrap: str, topics: Sequence[str], partitions: int) -> None:
    """Create topics (those that exist are left alone) with an unlimited retention.

    retention.ms is set explicitly: the workload's event times (its record timestamps, for the
    simple job) are up to 30 days old, and Quix Streams reads the setting back to configure its
    changelog topics (it fails on a topic whose configuration lacks it).
    """
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    existing = set(admin.list_topics(timeout=30).topics)
    wanted = [
        NewTopic(t, partitions, 1, config={"retention.ms": "-1"})
        for t in topics
        if t not in existing
    ]
    if not wanted:
        return
    for topic, future in admin.create_topics(wanted, operation_timeout=30).items():
        try:
            future.result(30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"cannot create topic {topic}: {exc}") from exc


async def fetch_all(
    bootstrap: str, topic: str, partitions: int, timeout_s: float = 60.0
) -> list[bytes]:
    """Every record value of a topic, read from the start to the high watermarks of a fetch."""
    marks = await fetch_highwaters(bootstrap, [topic], partitions, timeout_s)
    values: list[bytes] = []
    if not any(marks.values()):
        return values
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions) if marks[(topic, p)]]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        left = {tp: marks[(tp.topic, tp.partition)] for tp in tps}
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                for r in records:
                    if r.offset < left.get(tp, 0) and r.value is not None:
                        values.append(r.value)
                if records and records[-1].offset + 1 >= left.get(tp, 0):
                    left.pop(tp, None)
        if left:
            raise RuntimeError(f"{topic}: could not read to the high watermark of {list(left)}")
        return values
    finally:
        await consumer.stop()


def read_topic(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    """Synchronous wrapper of fetch_all."""
    return asyncio.run(fetch_all(bootstrap, topic, partitions))


def topic_records(bootstrap: str, topic: str, partitions: int) -> int:
    """Records in a topic (sum of its high watermarks; every topic here starts at offset 0)."""
    return sum(highwaters(bootstrap, [topic], partitions).values())
