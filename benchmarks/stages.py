"""Cost of each hot-path stage per event, without Kafka: Python stages, then Lua in Valkey.

Python stages are timed in-process over the workload's messages; the Lua cost is Valkey's own
accounting (INFO commandstats, usec of EVALSHA) for batches applied to a fresh key prefix, so
it excludes the network and the client.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from aiokafka import TopicPartition
from redis.asyncio.connection import Connection
from streamscore.store.wire import GroupBatch, ScoredEvent, encode_batches

from benchmarks.workload import Message
from streamscore.events import Limits, parse_event
from streamscore.events.types import TopicKind
from streamscore.metrics import create_metrics
from streamscore.runtime.aligner import Aligner
from streamscore.runtime.intake import Pending
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.sensors import Sensor
from streamscore.runtime.worker import _merge_key, _offset
from streamscore.scoring.engine import decide
from streamscore.store.keys import KeySpace
from streamscore.store.store import RedisStore, connect

KINDS = list(TopicKind)  # Settings.input_topics order
TOPICS = ("pv", "em", "dl", "un", "pr")


def _timed(fn: Callable[[], Any], n: int) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) / n * 1e6


#: Stages timed for comparison only: a part of another stage, and the encoder the worker replaced.
NOT_IN_TOTAL = ("orjson.loads (part of parse_event)", "redis-py pack_command (replaced)")


def python_stages(
    messages: Sequence[Message], rules_file: Path, batch: int, partitions: int, reps: int = 3
) -> dict[str, float]:
    """Microseconds per event of each Python stage the worker runs (best of `reps`)."""
    best: dict[str, float] = {}
    for _ in range(reps):
        for stage, us in _python_stages_once(messages, rules_file, batch, partitions).items():
            best[stage] = min(best.get(stage, math.inf), us)
    best["total Python (sum of stages, no Kafka)"] = sum(
        v for k, v in best.items() if k not in NOT_IN_TOTAL
    )
    return best


def _python_stages_once(
    messages: Sequence[Message], rules_file: Path, batch: int, partitions: int
) -> dict[str, float]:
    import orjson

    holder = RulesHolder(rules_file, Sensor(), 7 * 86400)
    rules = holder.rules
    limits = Limits()
    now = time.time_ns() // 1_000_000
    n = len(messages)
    out: dict[str, float] = {}
    out["orjson.loads (part of parse_event)"] = _timed(
        lambda: [orjson.loads(m.value) for m in messages], n
    )
    events: list[Any] = []
    out["parse_event"] = _timed(
        lambda: events.extend(parse_event(m.value, KINDS[m.topic], now, limits) for m in messages),
        n,
    )
    decisions: list[Any] = []
    out["decide"] = _timed(lambda: decisions.extend(decide(e, rules) for e in events), n)

    # The aligner as the worker drives it: Pending per record, push per partition, pop_ready.
    tps = [TopicPartition(t, p) for t in TOPICS for p in range(partitions)]
    per_tp: dict[TopicPartition, list[tuple[Any, int]]] = {tp: [] for tp in tps}
    for m, ev in zip(messages, events, strict=True):
        queue = per_tp[TopicPartition(TOPICS[m.topic], m.partition)]
        queue.append((ev, len(queue)))
    aligner: Aligner[TopicPartition, Pending] = Aligner(_merge_key, _offset, 200)
    aligner.assign(tps, now)
    released: list[tuple[TopicPartition, Pending]] = []

    def align() -> None:
        for tp in tps:
            queue = per_tp[tp]
            aligner.push(tp, [Pending(ev, off, 0) for ev, off in queue])
            aligner.note_position(tp, True, now)
        while True:
            got = aligner.pop_ready(now, batch)
            if not got:
                break
            released.extend(got)

    out["Pending + Aligner push/pop_ready"] = _timed(align, n)
    decision_of = {id(e): d for e, d in zip(events, decisions, strict=True)}
    scored: list[ScoredEvent] = []

    def build() -> None:
        scored.extend(
            ScoredEvent(
                p.event.lead_id,
                p.event.event_id,
                p.event.time_ms,
                tp.topic,
                tp.partition,
                p.offset,
                decision_of[id(p.event)],
            )
            for tp, p in released
        )

    out["ScoredEvent"] = _timed(build, n)
    keys = KeySpace("stages")
    groups: list[GroupBatch] = []

    def encode_all() -> None:
        for i in range(0, n, batch):
            groups.extend(encode_batches(scored[i : i + batch], keys))

    out["encode_batches"] = _timed(encode_all, n)
    # The apply call in the Redis protocol: the worker's way (hiredis, while the batch is
    # decided) and redis-py's own encoder, which it replaced. No connection is made.
    store = RedisStore(aioredis.Redis(), keys)
    config = holder.script_config
    out["RedisStore.pack (hiredis)"] = _timed(lambda: [store.pack(g, config) for g in groups], n)
    conn = Connection()
    out["redis-py pack_command (replaced)"] = _timed(
        lambda: [
            conn.pack_command("EVALSHA", "0" * 40, len(g.keys), *g.keys, config, g.payload)
            for g in groups
        ],
        n,
    )
    observe = create_metrics(process=False).event_to_scored_seconds.observe
    out["Histogram.observe (per event)"] = _timed(lambda: [observe(0.01) for _ in range(n)], n)
    return out


async def _apply_all(
    redis_url: str, prefix: str, rules_file: Path, batches: list[list[ScoredEvent]], now: int
) -> float:
    holder = RulesHolder(rules_file, Sensor(), 7 * 86400)
    client = connect(redis_url)
    store = RedisStore(client, KeySpace(prefix))
    started = time.perf_counter()
    try:
        for b in batches:
            for group_batch in encode_batches(b, store.keys):
                result = await store.apply(group_batch, holder.script_config, now)
                if result.outbox_entry:
                    await store.ack_outbox(result.group, [result.outbox_entry])
    finally:
        await client.aclose()
    return time.perf_counter() - started


def lua_cost(
    messages: Sequence[Message],
    redis_url: str,
    prefix: str,
    rules_file: Path,
    batch: int,
    reps: int = 2,
) -> dict[str, float]:
    """Valkey-side microseconds per event of apply_batch.lua, batched and one event per call.

    Valkey CPU (main thread) excludes time it waited for a CPU on a busy machine; the
    commandstats figure is wall time inside the command and includes it.
    """
    holder = RulesHolder(rules_file, Sensor(), 7 * 86400)
    limits = Limits()
    now = time.time_ns() // 1_000_000
    scored = []
    offsets = [0] * 5
    for m in messages:
        ev = parse_event(m.value, KINDS[m.topic], now, limits)
        scored.append(
            ScoredEvent(
                ev.lead_id,
                ev.event_id,
                ev.time_ms,
                TOPICS[m.topic],
                m.partition,
                offsets[m.topic],
                decide(ev, holder.rules),
            )
        )
        offsets[m.topic] += 1
    client = redis.Redis.from_url(redis_url)
    out: dict[str, float] = {}
    try:
        for rep in range(reps):
            for label, size, subset in (
                (f"apply_batch.lua, {batch} events per call", batch, scored),
                ("apply_batch.lua, 1 event per call", 1, scored[: min(len(scored), 20000)]),
            ):
                run_prefix = f"{prefix}:{rep}:{size}"
                cpu_before, usec_before = valkey_cpu_s(client), _evalsha_usec(client)
                wall = asyncio.run(
                    _apply_all(
                        redis_url,
                        run_prefix,
                        rules_file,
                        [subset[i : i + size] for i in range(0, len(subset), size)],
                        now,
                    )
                )
                cpu = (valkey_cpu_s(client) - cpu_before) * 1e6 / len(subset)
                usec = (_evalsha_usec(client) - usec_before) / len(subset)
                for key, value in (
                    (f"{label}: Valkey CPU us/event", cpu),
                    (f"{label}: EVALSHA us/event (commandstats)", usec),
                    (f"{label}: client wall us/event", wall / len(subset) * 1e6),
                ):
                    out[key] = min(out.get(key, math.inf), value)
    finally:
        client.close()
    return out


def valkey_cpu_s(client: redis.Redis) -> float:
    """CPU seconds of the server's main thread (INFO cpu)."""
    info = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def _evalsha_usec(client: redis.Redis) -> float:
    stats = client.info("commandstats")
    entry = stats.get("cmdstat_evalsha", {})
    return float(entry.get("usec", 0))
