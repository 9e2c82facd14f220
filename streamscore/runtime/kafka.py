"""aiokafka clients built from Settings: security options in one place, secrets never logged."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from streamscore.config import Settings

#: The producer's request limit (aiokafka's default, and Kafka's default message.max.bytes).
PRODUCER_MAX_REQUEST_BYTES = 1024 * 1024
#: A dead letter is cut to fit under this, leaving room for its key and the batch framing.
DEAD_LETTER_MAX_BYTES = PRODUCER_MAX_REQUEST_BYTES - 16 * 1024
#: Fetch sizes of the worker's consumer: per partition (about 3,800 events of 260 bytes) and
#: per fetch. aiokafka holds whole fetch responses until they are consumed, and reading one
#: briefly takes two or three times its size: with 8 and 64 MB a replay's worker peaked at
#: 260-300 MB (RSS) against 235 with these, at the same rate (about 38k events/s, simple job).
PARTITION_FETCH_MAX_BYTES = 1024 * 1024
FETCH_MAX_BYTES = 16 * 1024 * 1024


def security_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: protocol, SASL and TLS."""
    kwargs: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        kwargs.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value() if password else None,
        )
    return kwargs


def make_producer(settings: Settings, *, linger_ms: int = 0) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas: outputs are not lost on broker failover."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=PRODUCER_MAX_REQUEST_BYTES,
        max_request_size=PRODUCER_MAX_REQUEST_BYTES,
        client_id="streamscore-producer",
        **security_kwargs(settings),
    )


def make_consumer(settings: Settings, listener: Any) -> AIOKafkaConsumer:
    """A batch consumer of the input topics, subscribed with `listener` for rebalances.

    The range assignor gives partition N of every input topic to the same worker, so a lead's
    events from all topics meet in one worker's aligner (topics share the partition count).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        client_id="streamscore-worker",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.batch_max_events,
        fetch_max_bytes=FETCH_MAX_BYTES,
        max_partition_fetch_bytes=PARTITION_FETCH_MAX_BYTES,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        # Short group timeouts: a join waits up to about half the session timeout (Tansu).
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 6, 100),
        rebalance_timeout_ms=settings.kafka_session_timeout_ms,
        partition_assignment_strategy=(RangePartitionAssignor,),
        **security_kwargs(settings),
    )
    # The identity and account topics are inputs too: keyed by lead or account id and
    # co-partitioned with the others.
    consumer.subscribe(list(settings.subscribed_topics), listener=listener)
    return consumer


async def fetch_history(
    settings: Settings, topics: Sequence[str], timeout_s: float = 30.0
) -> dict[TopicPartition, tuple[int, int]]:
    """(first offset, high watermark) of every partition of `topics`, as a fetch reports them.

    The high watermark comes back with each fetch; a ListOffsets "latest" query is not used
    because Tansu answers it wrongly for batches of several records.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="streamscore-history",
        enable_auto_commit=False,
        **security_kwargs(settings),
    )
    await consumer.start()
    try:
        await consumer.topics()  # fresh metadata
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return {}
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        firsts = {tp: await consumer.position(tp) for tp in tps}
        deadline = time.monotonic() + timeout_s
        while any(consumer.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                missing = [
                    f"{tp.topic}[{tp.partition}]" for tp in tps if consumer.highwater(tp) is None
                ]
                raise TimeoutError(
                    f"no fetch answered for {', '.join(missing)} in {timeout_s:.0f} s"
                )
            await consumer.getmany(timeout_ms=200, max_records=1)
            await asyncio.sleep(0)
        return {tp: (firsts[tp], consumer.highwater(tp) or 0) for tp in tps}
    finally:
        await consumer.stop()


async def ensure_topics(settings: Settings) -> list[str]:
    """Create any missing streamscore topic; returns the names created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="streamscore-admin",
        **security_kwargs(settings),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in settings.all_topics if t not in existing]
        if missing:
            # Another worker may create them first; that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(t, settings.topic_partitions, settings.topic_replication_factor)
                        for t in missing
                    ]
                )
        return missing
    finally:
        await admin.close()
