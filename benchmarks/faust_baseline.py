"""Baseline (b): the per-event Faust app users would write, doing the worker's work per event.

One agent per input topic. Per event: parse_event, decide, GET the lead's value, decode it,
scoring.state.apply_event, encode it, and ONE commit.lua call (the lead's new value fenced on
its old prefix, the topic-partition's offset fenced on the last one recorded, the outputs into
the outbox), then the outputs sent to their topics and the outbox entry deleted. It is the
naive shape of the same exactly-once work: no cache, no batching, no alignment. Agents of
different topics may touch one lead at once; the loser of such a race gets a lead conflict and
applies its event again on the value the winner wrote (optimistic concurrency, as commit.lua
intends). Configured by STREAMSCORE_* variables; runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterable, Awaitable, Callable
from pathlib import Path
from typing import Any

import faust

from streamscore.config import Settings, load_settings
from streamscore.errors import InvalidEvent
from streamscore.events import Limits, parse_event
from streamscore.events.outputs import format_output
from streamscore.events.types import TopicKind
from streamscore.runtime.clock import now_ms
from streamscore.runtime.leads import sets_a_lead_could_be_in, sorted_sets_of
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.sensors import Sensor
from streamscore.scoring.engine import decide
from streamscore.scoring.outputs import Output
from streamscore.scoring.state import apply_event, new_lead
from streamscore.store.client import RedisClient, open_settings_client
from streamscore.store.codec import decode_lead, encode_lead
from streamscore.store.commit import GroupCommit, LeadWrite, OffsetWrite, prefix_of, split_value
from streamscore.store.commit import versioned as versioned_value
from streamscore.store.keys import KeySpace
from streamscore.store.outbox import ScoredOutput, encode_outputs
from streamscore.store.store import RedisStore

log = logging.getLogger(__name__)

#: Lead conflicts (another agent wrote the lead first) retried before giving up on an event.
CONFLICT_RETRIES = 20


class PerEventScorer:
    """The per-event work of one agent: load, apply, commit one event at a time."""

    def __init__(self, settings: Settings, store: RedisStore, rules: RulesHolder) -> None:
        self.store = store
        self.keys = store.keys
        self.rules = rules
        self.dedup_ms = settings.dedup_window_s * 1000
        #: (group, "topic:partition") -> last offset recorded in Redis; read once per pair.
        self.recorded: dict[tuple[int, str], int | None] = {}

    async def score(
        self, ev: Any, topic: str, partition: int, offset: int
    ) -> tuple[list[ScoredOutput], int, str]:
        """Apply one parsed event exactly once: its outputs (in the outbox), group, entry id."""
        ref = self.keys.lead_ref(ev.lead_id)
        key = self.keys.lead(ref)
        group = ref.group
        tp = f"{topic}:{partition}"
        if (group, tp) not in self.recorded:
            self.recorded.update(await self.store.recorded_offsets([tp]))
            self.recorded.setdefault((group, tp), None)
        applied = self.recorded[(group, tp)]
        if applied is not None and offset <= applied:
            return [], group, ""  # redelivered: already applied
        rules = self.rules.rules
        decision = decide(ev, rules)
        for _ in range(CONFLICT_RETRIES):
            raw: bytes | None = await self.store.client.execute("GET", key, key=key)
            if raw is None:
                state, version = new_lead(ev.lead_id), 0
            else:
                version, body = split_value(raw)
                state = decode_lead(body, ev.lead_id)
            state.partition = partition
            outputs: list[Output] = []
            apply_event(state, rules, ev.event_id, ev.time_ms, decision, self.dedup_ms, outputs)
            commit = GroupCommit(group)
            commit.offsets.append(OffsetWrite(tp, applied, offset))
            # Into the sorted sets it belongs in (due set, tier index), out of any it left.
            want = sorted_sets_of(state, group, self.keys, rules)
            could_be_in = sets_a_lead_could_be_in(state, group, self.keys, rules)
            commit.leads.append(
                LeadWrite(
                    key,
                    prefix_of(raw),
                    versioned_value(version + 1, encode_lead(state)),
                    tuple(want.items()),
                    tuple(k for k in could_be_in if k not in want),
                )
            )
            scored_at = now_ms()
            result = await self.store.commit(
                commit.pack(self.keys), encode_outputs(outputs, scored_at)
            )
            if result.ok:
                self.recorded[(group, tp)] = offset
                return [ScoredOutput(o, scored_at) for o in outputs], group, result.outbox_entry
            if not result.conflict.startswith("lead"):
                raise RuntimeError(f"commit conflict on {result.conflict}: another writer")
        raise RuntimeError(f"lead {ev.lead_id!r}: {CONFLICT_RETRIES} conflicts in a row")


def create_app(settings: Settings, client: RedisClient | None = None) -> faust.App:
    """The baseline app: one per-event agent per input topic."""
    app = faust.App(
        settings.consumer_group,
        broker=[f"kafka://{s.strip()}" for s in settings.kafka_bootstrap.split(",")],
        store="memory://",
        web_enabled=False,
        # Faust wants a data directory even for in-memory tables: not the working directory.
        datadir=str(Path(tempfile.gettempdir()) / f"bench-faust-{settings.consumer_group}"),
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
    keys = KeySpace(settings.redis_key_prefix, settings.redis_key_groups)
    scorers: list[PerEventScorer] = []

    async def scorer() -> PerEventScorer:
        if not scorers:  # the client's connections belong to the app's event loop
            redis = client or await open_settings_client(settings)
            scorers.append(PerEventScorer(settings, RedisStore(redis, keys), holder))
        return scorers[0]

    limits = Limits.from_settings(settings)
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    handoffs = app.topic(settings.topic_handoffs, **raw)
    tier_changes = app.topic(settings.topic_tier_changes, **raw)

    def make_agent(kind: TopicKind) -> Callable[[AsyncIterable[Any]], Awaitable[None]]:
        async def score(stream: AsyncIterable[Any]) -> None:
            s = await scorer()
            async for event in stream.events():  # type: ignore[attr-defined]
                msg = event.message
                try:
                    ev = parse_event(msg.value, kind, now_ms(), limits)
                except InvalidEvent:
                    continue
                outputs, group, entry = await s.score(ev, msg.topic, msg.partition, msg.offset)
                if not entry:
                    continue
                acks = []
                for output in outputs:
                    out = format_output(output, holder.tier_rank)
                    topic = handoffs if out.kind == "handoff" else tier_changes
                    acks.append(await topic.send(key=out.key, value=out.value))
                # The outbox entry goes once the broker has the outputs, as the worker does.
                await asyncio.gather(*acks)
                await s.store.ack_outbox(group, [entry])

        return score

    for name, kind in settings.topic_kinds.items():
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
