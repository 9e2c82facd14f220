"""Cost of each hot-path stage per event, without Kafka: the Python stages, then commit.lua.

The Python stages are the worker's own functions, timed in-process over the workload's
messages in the order and batch shape the worker runs them: parse + validate, align (Pending +
Aligner), decide + apply (LeadState per lead, dirty leads per batch), encode the dirty leads
once per batch, pack the commit call, format the outputs, count the batch. The commit's Redis
cost is the server's own accounting (its main thread's CPU, INFO commandstats) while the
runtime's Pipeline applies the same events to a fresh key prefix (benchmarks/inprocess.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from aiokafka import TopicPartition

from benchmarks.inprocess import InProcessPipeline
from benchmarks.workload import Message
from streamscore.events import Event, Limits, parse_event
from streamscore.events.outputs import format_output
from streamscore.events.types import TopicKind
from streamscore.metrics import create_metrics
from streamscore.runtime.aligner import Aligner
from streamscore.runtime.intake import Pending
from streamscore.runtime.leads import sorted_sets_of
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.sensors import Sensor
from streamscore.runtime.worker import _merge_key, _offset
from streamscore.scoring.engine import decide
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import CompiledRules, load_rules
from streamscore.scoring.state import LeadState, apply_event, new_lead
from streamscore.store.codec import encode_lead
from streamscore.store.commit import GroupCommit, LeadWrite, OffsetWrite, versioned
from streamscore.store.keys import KeySpace
from streamscore.store.outbox import ScoredOutput, encode_outputs

KINDS = list(TopicKind)  # Settings.input_topics order
TOPICS = ("pv", "em", "dl", "un", "pr")
DEDUP_MS = 7 * 86400 * 1000


def _timed(fn: Callable[[], Any], n: int) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) / n * 1e6


#: Stages timed for comparison only (a part of another stage).
NOT_IN_TOTAL = ("orjson.loads (part of parse + validate)",)


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


def _align(
    messages: Sequence[Message], events: list[Event], partitions: int, batch: int, now: int
) -> list[list[tuple[TopicPartition, Pending]]]:
    """The aligner as the worker drives it: Pending per record, push per partition, pop_ready."""
    tps = [TopicPartition(t, p) for t in TOPICS for p in range(partitions)]
    per_tp: dict[TopicPartition, list[Pending]] = {tp: [] for tp in tps}
    for m, ev in zip(messages, events, strict=True):
        queue = per_tp[TopicPartition(TOPICS[m.topic], m.partition)]
        queue.append(Pending(ev, len(queue), 0))
    aligner: Aligner[TopicPartition, Pending] = Aligner(_merge_key, _offset, 200)
    aligner.assign(tps, now)
    for tp in tps:
        aligner.push(tp, per_tp[tp])
        aligner.note_position(tp, 0, now)
    released = []
    while got := aligner.pop_ready(now, batch):
        released.append(got)
    return released


def _python_stages_once(
    messages: Sequence[Message], rules_file: Path, batch: int, partitions: int
) -> dict[str, float]:
    import orjson

    rules = RulesHolder(rules_file, Sensor(), 7 * 86400).rules
    limits = Limits()
    now = time.time_ns() // 1_000_000
    n = len(messages)
    out: dict[str, float] = {}
    out["orjson.loads (part of parse + validate)"] = _timed(
        lambda: [orjson.loads(m.value) for m in messages], n
    )
    events: list[Event] = []
    out["parse + validate (parse_event)"] = _timed(
        lambda: events.extend(parse_event(m.value, KINDS[m.topic], now, limits) for m in messages),
        n,
    )
    released: list[list[tuple[TopicPartition, Pending]]] = []
    out["align (Pending + Aligner push/pop_ready)"] = _timed(
        lambda: released.extend(_align(messages, events, partitions, batch, now)), n
    )
    keys = KeySpace("stages")
    states: dict[str, LeadState] = {}
    dirty: list[tuple[dict[str, LeadState], dict[str, int], list[Output]]] = []

    def decide_apply() -> None:
        key_of: dict[str, str] = {}
        for ready in released:
            leads: dict[str, LeadState] = {}
            offsets: dict[str, int] = {}
            outputs: list[Output] = []
            for tp, p in ready:
                ev = p.event
                assert isinstance(ev, Event)  # the full job has no sales outcomes
                key = key_of.get(ev.lead_id)
                if key is None:
                    key = key_of[ev.lead_id] = keys.lead(keys.lead_ref(ev.lead_id))
                state = states.get(key)
                if state is None:
                    state = states[key] = new_lead(ev.lead_id)
                state.partition = tp.partition
                apply_event(
                    state, rules, ev.event_id, ev.time_ms, decide(ev, rules), DEDUP_MS, outputs
                )
                leads[key] = state
                offsets[f"{tp.topic}:{tp.partition}"] = p.offset
            dirty.append((leads, offsets, outputs))

    out["decide + apply (engine.decide, state.apply_event)"] = _timed(decide_apply, n)
    encoded: list[list[tuple[str, bytes, tuple[tuple[str, float], ...]]]] = []

    def encode() -> None:
        for leads, _, _ in dirty:
            rows = []
            for key, state in leads.items():
                sets = sorted_sets_of(state, 0, keys, rules) if state.tier else {}
                rows.append((key, versioned(1, encode_lead(state)), tuple(sets.items())))
            encoded.append(rows)

    out["encode dirty leads once per batch (codec, sorted sets)"] = _timed(encode, n)

    def pack() -> None:
        for (_, offsets, _), rows in zip(dirty, encoded, strict=True):
            commit = GroupCommit(0)
            for name, new in offsets.items():
                commit.offsets.append(OffsetWrite(name, None, new))
            for key, value, adds in rows:
                commit.leads.append(LeadWrite(key, b"", value, adds))
            commit.pack(keys)

    out["pack commit call (GroupCommit.pack, hiredis)"] = _timed(pack, n)
    tier_rank = {t.name: i for i, t in enumerate(rules.tiers)}

    def outputs() -> None:
        for _, _, outs in dirty:
            encode_outputs(outs, now)
            for o in outs:
                format_output(ScoredOutput(o, now), tier_rank)

    out["outputs (outbox entry, message formatting)"] = _timed(outputs, n)
    observe = create_metrics(process=False).event_to_scored_seconds.observe
    out["Histogram.observe (per event)"] = _timed(lambda: [observe(0.01) for _ in range(n)], n)
    return out


async def _commit_all(
    redis_url: str, prefix: str, rules: CompiledRules, batches: list[list[Any]]
) -> float:
    started = time.perf_counter()
    async with InProcessPipeline.open(redis_url, prefix, rules) as pipe:
        for b in batches:
            await pipe.submit(b)
    return time.perf_counter() - started


def commit_cost(
    messages: Sequence[Message],
    redis_url: str,
    prefix: str,
    rules_file: Path,
    batch: int,
    reps: int = 2,
) -> dict[str, float]:
    """Redis-side microseconds per event of commit.lua, at the worker's batch size.

    Redis CPU (main thread) excludes time it waited for a CPU on a busy machine; the
    commandstats figure is wall time inside the command and includes it.
    """
    rules = load_rules(rules_file)
    limits = Limits()
    now = time.time_ns() // 1_000_000
    events = [
        (
            TopicPartition(TOPICS[m.topic], m.partition),
            parse_event(m.value, KINDS[m.topic], now, limits),
        )
        for m in messages
    ]
    events.sort(key=lambda row: (row[1].time_ms, row[1].event_id))
    client = redis.Redis.from_url(redis_url)
    out: dict[str, float] = {}
    label = f"commit.lua, {batch} events per batch"
    try:
        for rep in range(reps):
            cpu_before, usec_before = redis_cpu_s(client), _evalsha_usec(client)
            wall = asyncio.run(
                _commit_all(
                    redis_url,
                    f"{prefix}:{rep}",
                    rules,
                    [events[i : i + batch] for i in range(0, len(events), batch)],
                )
            )
            n = len(events)
            cpu = (redis_cpu_s(client) - cpu_before) * 1e6 / n
            usec = (_evalsha_usec(client) - usec_before) / n
            for key, value in (
                (f"{label}: Redis CPU us/event", cpu),
                (f"{label}: EVALSHA us/event (commandstats)", usec),
                (f"{label}: whole pipeline, client wall us/event", wall / n * 1e6),
            ):
                out[key] = min(out.get(key, math.inf), value)
    finally:
        client.close()
    return out


def redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds of the server's main thread (INFO cpu)."""
    info = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def _evalsha_usec(client: redis.Redis) -> float:
    stats = client.info("commandstats")
    entry = stats.get("cmdstat_evalsha", {})
    return float(entry.get("usec", 0))
