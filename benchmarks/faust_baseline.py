"""Baseline (b): the per-event Faust app users would write, with streamscore's own scoring.

One agent per input topic: parse_event, decide, then ONE EVALSHA of apply_batch.lua per event
(encode_batches of a one-event list, RedisStore.apply), and the event's outputs (tier changes,
handoffs) sent to their topics. Configured by STREAMSCORE_* variables; runs until SIGTERM.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

import faust
from streamscore.store.wire import ScoredEvent, decode_outputs, encode_batches

from streamscore.config import Settings, load_settings
from streamscore.errors import InvalidEvent
from streamscore.events import Limits, parse_event
from streamscore.events.outputs import format_output
from streamscore.events.types import TopicKind
from streamscore.runtime.clock import now_ms
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.sensors import Sensor
from streamscore.scoring.engine import decide
from streamscore.store.keys import KeySpace
from streamscore.store.store import RedisStore, connect

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> faust.App:
    """The baseline app: one per-event agent per input topic."""
    app = faust.App(
        settings.consumer_group,
        broker=[f"kafka://{s.strip()}" for s in settings.kafka_bootstrap.split(",")],
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        # Without these the first group join waits ~half of Faust's default session timeout.
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        broker_rebalance_timeout=6,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
    )
    holder = RulesHolder(settings.rules_file, Sensor(), settings.dedup_window_s)
    store = RedisStore(
        connect(settings.redis_url.get_secret_value()),
        KeySpace(settings.redis_key_prefix, settings.redis_key_groups),
    )
    limits = Limits.from_settings(settings)
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    handoffs = app.topic(settings.topic_handoffs, **raw)
    tier_changes = app.topic(settings.topic_tier_changes, **raw)
    kinds = settings.topic_kinds

    def make_agent(kind: TopicKind) -> Callable[[AsyncIterable[Any]], Awaitable[None]]:
        async def score(stream: AsyncIterable[Any]) -> None:
            async for event in stream.events():  # type: ignore[attr-defined]
                msg = event.message
                now = now_ms()
                try:
                    ev = parse_event(msg.value, kind, now, limits)
                except InvalidEvent:
                    continue
                scored = ScoredEvent(
                    ev.lead_id,
                    ev.event_id,
                    ev.time_ms,
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    decide(ev, holder.rules),
                )
                (batch,) = encode_batches([scored], store.keys)
                result = await store.apply(batch, holder.script_config, now)
                if result.outbox_entry:
                    for output in decode_outputs(result.outputs):
                        out = format_output(output, holder.tier_rank)
                        topic = handoffs if out.kind == "handoff" else tier_changes
                        await topic.send(key=out.key, value=out.value)
                    await store.ack_outbox(result.group, [result.outbox_entry])

        return score

    for name, kind in kinds.items():
        app.agent(app.topic(name, **raw), name=f"score-{kind.value}")(make_agent(kind))
    return app


def main() -> None:
    """Run the baseline worker until SIGTERM."""
    settings = load_settings()
    app = create_app(settings)
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
