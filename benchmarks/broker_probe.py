"""How soon a bare consumer sees a record after the broker acked it, on the embedded Tansu.

    python -m benchmarks.broker_probe --linger-ms 20
    python -m benchmarks.broker_probe --linger-ms 100

A paced producer (librdkafka, in a thread) writes small records to five topics; an aiokafka
`getmany` consumer reads them. Latency runs from the producer's delivery report (the append) to
the record coming out of `getmany`. No worker and no Redis: this is the floor any consumer of the
broker starts from, and how it depends on the producer's batching.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import defaultdict

from aiokafka import AIOKafkaConsumer
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from benchmarks.latency import percentile
from streamscore import dev

TOPICS = 5
WARM_UP_S = 1.0  # records acked in the first second are left out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.broker_probe", description=__doc__)
    p.add_argument("--rate", type=float, default=2000.0, help="records per second")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--partitions", type=int, default=4, help="partitions per topic")
    p.add_argument("--linger-ms", type=int, default=100, help="the producer's linger")
    p.add_argument("--fetch-max-wait-ms", type=int, default=5, help="the consumer's fetch wait")
    return p.parse_args(argv)


def produce(
    bootstrap: str, args: argparse.Namespace, acked: dict[int, float], done: threading.Event
) -> None:
    """Send `rate` records a second for `seconds`; record each one's ack time."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": args.linger_ms, "acks": "all"}
    )

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        value = msg.value()
        if err is None and value is not None:
            acked[int(value)] = time.time() * 1000.0

    started = time.monotonic()
    sent = 0
    try:
        while time.monotonic() - started < args.seconds:
            due = int((time.monotonic() - started) * args.rate)
            while sent < due:
                topic, partition = sent % TOPICS, (sent // TOPICS) % args.partitions
                producer.produce(
                    f"probe-{topic}",
                    str(sent).encode(),
                    partition=partition,
                    on_delivery=on_delivery,
                )
                sent += 1
            producer.poll(0)
            time.sleep(0.0005)
        producer.flush(30)
    finally:
        done.set()


async def consume(
    bootstrap: str,
    args: argparse.Namespace,
    seen: dict[int, float],
    ready: asyncio.Event,
    done: threading.Event,
) -> None:
    """Read every topic until the producer is done and the consumer has caught up."""
    consumer = AIOKafkaConsumer(
        *(f"probe-{t}" for t in range(TOPICS)),
        bootstrap_servers=bootstrap,
        group_id="broker-probe",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
    )
    await consumer.start()
    try:
        idle_since = None
        while True:
            batch = await consumer.getmany(timeout_ms=5, max_records=2000)
            if consumer.assignment():
                ready.set()  # joined the group and fetching: the producer may start
            now = time.time() * 1000.0
            for records in batch.values():
                for record in records:
                    if record.value is not None:
                        seen[int(record.value)] = now
            if done.is_set():
                idle_since = idle_since or time.monotonic()
                if batch:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > 2.0:
                    return
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the probe on a fresh embedded broker and print the latency figures."""
    args = parse_args(argv)
    broker = dev.start_broker()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        created = admin.create_topics(
            [NewTopic(f"probe-{t}", args.partitions, 1) for t in range(TOPICS)]
        )
        for future in created.values():
            future.result()
        acked: dict[int, float] = {}
        seen: dict[int, float] = {}
        done = threading.Event()
        producer = threading.Thread(target=produce, args=(broker.bootstrap, args, acked, done))

        async def run() -> None:
            ready = asyncio.Event()
            reader = asyncio.create_task(consume(broker.bootstrap, args, seen, ready, done))
            joined = asyncio.create_task(ready.wait())
            await asyncio.wait({reader, joined}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                joined.cancel()
                reader.result()  # the consumer failed before joining: raise its error
                return
            producer.start()
            await reader

        asyncio.run(run())
        producer.join()
    finally:
        broker.stop()
    first_ack = min(acked.values(), default=0.0)
    pairs = sorted(
        (ack, seen[i] - ack)
        for i, ack in acked.items()
        if i in seen and ack - first_ack >= WARM_UP_S * 1000.0
    )
    latencies = [lat for _, lat in pairs]
    print(
        f"linger {args.linger_ms} ms, {args.partitions} partitions x {TOPICS} topics, "
        f"{args.rate:,.0f} records/s, fetch wait {args.fetch_max_wait_ms} ms: "
        f"{len(latencies):,} records (of {len(acked):,} acked), ack->fetch p50 "
        f"{percentile(latencies, 50):.1f} ms, p90 {percentile(latencies, 90):.1f}, p99 "
        f"{percentile(latencies, 99):.1f}, max {max(latencies, default=float('nan')):.1f}"
    )
    by_second: dict[int, float] = defaultdict(float)
    for ack, lat in pairs:
        second = int((ack - first_ack) / 1000.0)
        by_second[second] = max(by_second[second], lat)
    print("max per second: " + " ".join(f"{s}s:{v:.0f}" for s, v in sorted(by_second.items())))


if __name__ == "__main__":
    main()
