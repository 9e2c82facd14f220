"""A sales-alerting consumer reads handoffs from the embedded broker within seconds of joining.

librdkafka (confluent-kafka, and most CRM and chat bridges) defaults to session.timeout.ms=45000,
and the embedded broker holds a group's first join for about half the session timeout: about
23 s before the first record. With session.timeout.ms=6000, as the README tells
consumers to set, it is about 3 s; this test holds that figure to a generous bound.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.conftest import REPO_ROOT

HANDOFF = (
    REPO_ROOT / "schemas" / "examples" / "handoff.v1" / "valid" / "handoff.json"
).read_bytes()
#: Well above the ~3 s measured, well below the ~23 s of librdkafka's default session timeout.
FIRST_RECORD_WITHIN_S = 15.0


def test_a_group_consumer_with_a_6_s_session_timeout_reads_a_handoff_within_seconds(
    kafka_bootstrap: str, unique: str
) -> None:
    topic = f"ss.v1.handoffs-{unique}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    producer.produce(topic, HANDOFF, key=b"lead-8f2f2c7d")
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"sales-alerts-{unique}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    try:
        consumer.subscribe([topic])
        started = time.monotonic()
        received: Message | None = None
        while received is None and time.monotonic() - started < FIRST_RECORD_WITHIN_S:
            message = consumer.poll(0.5)
            if message is not None:
                assert message.error() is None, message.error()
                received = message
        waited_s = time.monotonic() - started
    finally:
        consumer.close()
    assert received is not None, f"no handoff within {FIRST_RECORD_WITHIN_S} s"
    assert received.value() == HANDOFF
    assert received.key() == b"lead-8f2f2c7d"
    assert waited_s < FIRST_RECORD_WITHIN_S
