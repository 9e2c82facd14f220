"""Faust agents: the handoff audit, which reads the handoff topic as sales alerting would."""

from __future__ import annotations

from collections.abc import AsyncIterable

import faust
import orjson

from streamscore.config import Settings
from streamscore.events.timefmt import parse_time_ms
from streamscore.runtime.clock import now_ms
from streamscore.runtime.sensors import Sensor


def register_handoff_audit(app: faust.App, settings: Settings, sensor: Sensor) -> None:
    """Observe how long each handoff takes from scoring to being readable on its topic."""
    topic = app.topic(settings.topic_handoffs, key_serializer="raw", value_serializer="raw")

    @app.agent(topic, name="handoff-audit")
    async def handoff_audit(stream: AsyncIterable[bytes]) -> None:
        async for value in stream:
            try:
                scored_at_ms = parse_time_ms(orjson.loads(value)["scored_at"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # not ours to judge: the topic's producer is streamscore itself
            lag_s = (now_ms() - scored_at_ms) / 1000.0
            sensor.handoff_visible(max(lag_s, 0.0))
