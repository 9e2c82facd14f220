"""Redis memory per lead: a dedicated load of N leads x 3 events, written as the worker writes.

The events go through the runtime's own Pipeline (benchmarks/inprocess.py): lead values are the
8-byte write version plus the MessagePack LeadState (seen event ids inline), and a lead with a
tier above the floor sits in its partition's due set.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
from aiokafka import TopicPartition

from benchmarks.inprocess import InProcessPipeline
from benchmarks.workload import EventFactory, Profiles, lead_id_of
from streamscore.events import Event, Limits, parse_event
from streamscore.events.types import TopicKind
from streamscore.scoring.rules import load_rules
from streamscore.store.codec import decode_lead
from streamscore.store.commit import split_value
from streamscore.store.keys import KeySpace

BATCH = 2000
PARTITIONS = 4
PLAN = (
    ("identify", TopicKind.PROFILES, 0),
    ("page_view", TopicKind.PAGE_VIEWS, 3_600_000),
    ("email_open", TopicKind.EMAIL_EVENTS, 7_200_000),
)


@dataclass(frozen=True)
class WorkloadMemory:
    """MEMORY USAGE of leads left by the replay workload (its mix of activity and profiles)."""

    sample_size: int
    lead_state_bytes: float
    value_bytes: float  # STRLEN: the stored value itself
    seen_ids: float  # event ids kept inline for de-duplication


@dataclass
class MemoryResult:
    """Bytes per lead, from INFO memory and from MEMORY USAGE of sampled keys."""

    leads: int
    events_per_lead: int
    used_memory_delta_bytes: int
    bytes_per_lead_info: float
    sample_size: int
    lead_state_bytes: float  # MEMORY USAGE of the lead key (value, key, allocator overhead)
    value_bytes: float  # STRLEN of the value
    due_zset_bytes: int  # every due set, in all
    due_members: int
    workload: WorkloadMemory | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _events(leads: int, seed: int, end_ms: int) -> list[tuple[TopicPartition, Event]]:
    """Each lead's identify, page view and email open, in event-time order."""
    rng = random.Random(seed)
    factory = EventFactory(rng, Profiles(seed))
    limits = Limits()
    now = end_ms + 60_000
    out: list[tuple[int, TopicPartition, Event]] = []
    for lead in range(leads):
        lead_id = lead_id_of(lead, "M")
        base = min(end_ms - rng.randrange(30 * 86_400_000), end_ms - 7_200_000)
        for event_type, kind, delta_ms in PLAN:
            doc = factory.document(event_type, lead_id, lead, base + delta_ms)
            ev = parse_event(orjson.dumps(doc), kind, now, limits)
            tp = TopicPartition(kind.value, lead % PARTITIONS)
            out.append((ev.time_ms, tp, ev))
    out.sort(key=lambda row: (row[0], row[2].event_id))
    return [(tp, ev) for _, tp, ev in out]


async def _load(redis_url: str, prefix: str, rules_file: Path, leads: int, seed: int) -> None:
    end_ms = time.time_ns() // 1_000_000 - 60_000
    events = _events(leads, seed, end_ms)
    async with InProcessPipeline.open(redis_url, prefix, load_rules(rules_file)) as pipe:
        for i in range(0, len(events), BATCH):
            await pipe.submit(events[i : i + BATCH])


def measure_memory(
    redis_url: str,
    prefix: str,
    rules_file: Path,
    leads: int,
    seed: int,
    workload: WorkloadMemory | None = None,
    sample_size: int = 1000,
) -> MemoryResult:
    """Load `leads` leads into a fresh prefix and report bytes per lead."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.memory_purge()
        before = int(client.info("memory")["used_memory"])
        asyncio.run(_load(redis_url, prefix, rules_file, leads, seed))
        client.memory_purge()
        after = int(client.info("memory")["used_memory"])
        keys = KeySpace(prefix)
        rng = random.Random(seed + 1)
        sample = rng.sample(range(leads), min(sample_size, leads))
        state_total = value_total = 0
        for lead in sample:
            key = keys.lead(keys.lead_ref(lead_id_of(lead, "M")))
            state_total += int(client.memory_usage(key, samples=0) or 0)
            value_total += int(client.strlen(key))
        due_bytes = due_members = 0
        for partition in range(PARTITIONS):
            due_key = keys.due(0, partition)
            due_bytes += int(client.memory_usage(due_key, samples=0) or 0)
            due_members += int(client.zcard(due_key))
        n = len(sample)
        return MemoryResult(
            leads=leads,
            events_per_lead=len(PLAN),
            used_memory_delta_bytes=after - before,
            bytes_per_lead_info=(after - before) / leads,
            sample_size=n,
            lead_state_bytes=state_total / n,
            value_bytes=value_total / n,
            due_zset_bytes=due_bytes,
            due_members=due_members,
            workload=workload,
        )
    finally:
        client.close()


def sample_workload(
    client: redis.Redis, keys: KeySpace, sample_size: int = 1000
) -> WorkloadMemory | None:
    """MEMORY USAGE of up to `sample_size` leads under `keys` (None when there are none)."""
    lead_keys = []
    for key in client.scan_iter(match=f"{keys.prefix}:{{g0}}:lead:*", count=5000):
        lead_keys.append(key)
        if len(lead_keys) >= sample_size:
            break
    if not lead_keys:
        return None
    state_total = value_total = ids = 0
    for key in lead_keys:
        state_total += int(client.memory_usage(key, samples=0) or 0)
        raw = client.get(key)
        assert isinstance(raw, bytes)
        value_total += len(raw)
        ids += len(decode_lead(split_value(raw)[1]).seen or ())
    n = len(lead_keys)
    return WorkloadMemory(n, state_total / n, value_total / n, ids / n)
