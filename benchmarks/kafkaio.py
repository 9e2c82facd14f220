"""Fast producing of the pre-encoded workload (confluent-kafka) and high watermarks by fetch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import KafkaError, Message, Producer

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
    bootstrap: str, topics: Sequence[str], records: Sequence[Record]
) -> tuple[dict[tuple[str, int], int], float]:
    """Send every record to its topic and partition; returns counts per partition and seconds."""
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
                produce(
                    topics[r.topic], r.value, r.key, partition=r.partition, on_delivery=on_delivery
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
