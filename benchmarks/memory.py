"""Redis memory per lead: a dedicated load of N leads x 3 events, applied as the worker does."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
from streamscore.store.wire import ScoredEvent, encode_batches

from benchmarks.workload import EventFactory, Profiles, lead_id_of
from streamscore.events import Limits, parse_event
from streamscore.events.types import TopicKind
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.sensors import Sensor
from streamscore.scoring.engine import decide
from streamscore.store.keys import KeySpace
from streamscore.store.store import RedisStore, connect

BATCH = 2000
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
    seen_zset_bytes: float
    seen_ids: float


@dataclass
class MemoryResult:
    """Bytes per lead, from INFO memory and from MEMORY USAGE of sampled keys."""

    leads: int
    events_per_lead: int
    used_memory_delta_bytes: int
    bytes_per_lead_info: float
    sample_size: int
    lead_state_bytes: float
    seen_zset_bytes: float
    bytes_per_lead_keys: float
    due_zset_bytes: int
    workload: WorkloadMemory | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


async def _load(
    redis_url: str, prefix: str, rules_file: Path, leads: int, seed: int, end_ms: int
) -> None:
    holder = RulesHolder(rules_file, Sensor(), 7 * 86400)
    client = connect(redis_url)
    store = RedisStore(client, KeySpace(prefix))
    rng = random.Random(seed)
    factory = EventFactory(rng, Profiles(seed))
    limits = Limits()
    now = end_ms + 60_000
    pending: list[ScoredEvent] = []
    offset = 0
    try:
        for lead in range(leads):
            lead_id = lead_id_of(lead, "M")
            base = end_ms - rng.randrange(30 * 86_400_000)
            base = min(base, end_ms - 7_200_000)
            for event_type, kind, delta_ms in PLAN:
                doc = factory.document(event_type, lead_id, lead, base + delta_ms)
                ev = parse_event(orjson.dumps(doc), kind, now, limits)
                pending.append(
                    ScoredEvent(
                        ev.lead_id,
                        ev.event_id,
                        ev.time_ms,
                        "mem",
                        0,
                        offset,
                        decide(ev, holder.rules),
                    )
                )
                offset += 1
            if len(pending) >= BATCH or lead == leads - 1:
                for batch in encode_batches(pending, store.keys):
                    result = await store.apply(batch, holder.script_config, now)
                    # As the worker does once the outputs are on the broker.
                    await store.ack_outbox(
                        result.group, [result.outbox_entry] if result.outbox_entry else []
                    )
                pending = []
    finally:
        await client.aclose()


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
        end_ms = time.time_ns() // 1_000_000 - 60_000
        asyncio.run(_load(redis_url, prefix, rules_file, leads, seed, end_ms))
        client.memory_purge()
        after = int(client.info("memory")["used_memory"])
        keys = KeySpace(prefix)
        rng = random.Random(seed + 1)
        sample = rng.sample(range(leads), min(sample_size, leads))
        state_total = zset_total = 0
        for lead in sample:
            ref = keys.lead_ref(lead_id_of(lead, "M"))
            state_total += int(client.memory_usage(keys.lead(ref), samples=0) or 0)
            zset_total += int(client.memory_usage(keys.seen(ref), samples=0) or 0)
        n = len(sample)
        return MemoryResult(
            leads=leads,
            events_per_lead=len(PLAN),
            used_memory_delta_bytes=after - before,
            bytes_per_lead_info=(after - before) / leads,
            sample_size=n,
            lead_state_bytes=state_total / n,
            seen_zset_bytes=zset_total / n,
            bytes_per_lead_keys=(state_total + zset_total) / n,
            due_zset_bytes=int(client.memory_usage(keys.due(0), samples=0) or 0),
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
    state_total = zset_total = ids = 0
    for key in lead_keys:
        seen_key = key.replace(b":lead:", b":seen:")
        state_total += int(client.memory_usage(key, samples=0) or 0)
        zset_total += int(client.memory_usage(seen_key, samples=0) or 0)
        ids += int(client.zcard(seen_key))
    n = len(lead_keys)
    return WorkloadMemory(n, state_total / n, zset_total / n, ids / n)
