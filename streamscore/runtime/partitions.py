"""What the worker owns and how far behind it is: assignment, fetch positions, lag, flow control.

Lag is computed from the high watermark that comes back with every fetch: Tansu's "latest
offset" answer is wrong for multi-record batches, the fetch's watermark is right. A partition
whose position is beyond its watermark was recreated or truncated, which the worker must handle
(see ScoringWorker.restart_partition).
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError

from streamscore.runtime.aligner import Aligner
from streamscore.runtime.intake import Pending
from streamscore.runtime.scope import ReplayScope
from streamscore.runtime.sensors import Sensor

#: How often the lag gauges are refreshed.
LAG_EVERY_S = 1.0


class Partitions:
    """The input partitions this worker owns, with their fetch positions."""

    def __init__(
        self, input_topics: Sequence[str], sensor: Sensor, scope: ReplayScope | None = None
    ) -> None:
        self._topics = input_topics
        self._sensor = sensor
        self._scope = scope
        self.assigned: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}
        self._next_lag = 0.0

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Start owning partitions."""
        self.assigned |= set(partitions)
        self._sensor.partitions_assigned(len(self.assigned))

    def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop owning partitions."""
        for tp in partitions:
            self.assigned.discard(tp)
            self.positions.pop(tp, None)
        self._sensor.partitions_assigned(len(self.assigned))

    def clear(self) -> None:
        """Own nothing (the consumer is leaving the group)."""
        self.revoke(list(self.assigned))

    async def observe(
        self, consumer: AIOKafkaConsumer, aligner: Aligner[TopicPartition, Pending], now_ms: int
    ) -> list[tuple[TopicPartition, int, int]]:
        """Tell the aligner each partition's backlog, update lag; return truncated partitions.

        A truncated partition is returned as (partition, position, high watermark).
        """
        update_lag = time.monotonic() >= self._next_lag
        lag: Tally[str] = Tally()
        truncated = []
        for tp in list(self.assigned):
            position = self.positions.get(tp)
            if position is None:
                try:
                    position = await consumer.position(tp)
                except IllegalStateError:
                    continue
                self.positions[tp] = position
            highwater = consumer.highwater(tp)
            if self._scope is not None:
                highwater = self._scope.highwater(tp, highwater)
            backlog = None if highwater is None else max(highwater - position, 0)
            if highwater is not None and position > highwater:
                truncated.append((tp, position, highwater))
                backlog = None
            aligner.note_position(tp, backlog, now_ms)
            if update_lag and backlog is not None:
                lag[tp.topic] += backlog
        if update_lag:
            self._next_lag = time.monotonic() + LAG_EVERY_S
            for topic in self._topics:
                self._sensor.consumer_lag(topic, lag[topic])
        return truncated

    def flow_control(
        self, consumer: AIOKafkaConsumer, aligner: Aligner[TopicPartition, Pending], high: int
    ) -> None:
        """Pause fetching the partitions the aligner holds enough of; resume them when drained."""
        paused = consumer.paused()
        pause, resume = aligner.flow(paused, high)
        # pause() raises for a partition the consumer no longer has, and the aligner's set and
        # the consumer's can differ while a rebalance is under way.
        assignment = consumer.assignment()
        pause = [tp for tp in pause if tp in assignment]
        if pause:
            consumer.pause(*pause)
        if resume:
            consumer.resume(*resume)
        self._sensor.aligner_state(
            aligner.buffered(), len(paused) + len(pause) - len(resume), len(pause)
        )
