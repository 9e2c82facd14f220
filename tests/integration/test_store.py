"""RedisStore's pre-packed apply call on a real Redis-compatible server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import msgpack
import orjson
import pytest
import redis.asyncio as aioredis

from streamscore.scoring.engine import decide
from streamscore.store.keys import KeySpace
from streamscore.store.store import RedisStore
from streamscore.store.wire import GroupBatch, ScoredEvent, encode_batches
from tests.integration.test_lua_parity import RULES, FakeEvent

CONFIG = orjson.dumps({**RULES.script_config(), "dedup_window_ms": 3_600_000})
T0 = 1_760_000_000_000
PRICING = FakeEvent("page_view", {"path": "/pricing"}, {}, {})


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    client = aioredis.Redis.from_url(redis_url)
    keys = KeySpace(f"store:{uuid.uuid4().hex[:8]}")
    yield RedisStore(client, keys)
    await client.aclose()


def one_batch(
    store: RedisStore, leads: list[str], first_offset: int, partition: int = 0
) -> GroupBatch:
    events = [
        ScoredEvent(lead, f"e{partition}-{first_offset + i}", T0 + i, "pv", partition,
                    first_offset + i, decide(PRICING, RULES))
        for i, lead in enumerate(leads)
    ]  # fmt: skip
    (batch,) = encode_batches(events, store.keys)
    return batch


async def test_apply_reloads_the_script_when_the_server_lost_it(store: RedisStore) -> None:
    first = await store.apply(one_batch(store, ["ann"], 0), CONFIG, T0)
    await store.client.script_flush()
    second = await store.apply(one_batch(store, ["ann"], 1), CONFIG, T0)
    assert first.duplicates == second.duplicates == []
    assert (await store.lead_fields("ann"))["lt"] == str(T0)
    assert await store.applied_offsets() == {"pv:0": 1}


async def test_packed_call_carries_scored_at_and_every_key(store: RedisStore) -> None:
    leads = [f"lead-{i}" for i in range(3000)]
    packed = store.pack(one_batch(store, leads, 0), CONFIG)
    result = await store.apply_packed(packed, T0 + 123_456)
    assert result.duplicates == []
    assert await store.applied_offsets() == {"pv:0": 2999}
    assert (await store.lead_fields("lead-2999"))["lt"] == str(T0 + 2999)


async def test_a_cancelled_apply_leaves_no_reply_for_the_next_call(store: RedisStore) -> None:
    solo = one_batch(store, ["solo"], 0, partition=1)
    assert (await store.apply(solo, CONFIG, T0)).duplicates == []
    big = store.pack(one_batch(store, [f"lead-{i}" for i in range(5000)], 0), CONFIG)
    call = asyncio.ensure_future(store.apply_packed(big, T0))
    await asyncio.sleep(0.002)  # sent, most likely; its reply (no duplicates) is in flight
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The redelivered event's call must read its own reply, which marks it a duplicate.
    assert (await store.apply(solo, CONFIG, T0)).duplicates == [0]


async def test_a_state_saved_with_one_field_per_attribute_is_read_and_rewritten_packed(
    store: RedisStore,
) -> None:
    """States written before the profile was packed (p:<attr> fields) keep their profile."""
    title = [T0 - 1000, "vp sales", 20, 2, 0, [["exec", 20]]]  # BANT authority (bit 2)
    legacy = {"id": "old", "a": T0 - 1000, "lt": T0 - 1000, "fit": 20, "bant": 2, "p:title": title}
    key = store.keys.lead(store.keys.lead_ref("old"))
    await store.client.set(key, msgpack.packb(legacy))
    identify = FakeEvent("identify", {}, {}, {"size": 900})
    event = ScoredEvent("old", "id-1", T0, "pv", 0, 0, decide(identify, RULES))
    (batch,) = encode_batches([event], store.keys)
    await store.apply(batch, CONFIG, T0)
    raw = msgpack.unpackb(await store.client.get(key), raw=False, unicode_errors="surrogateescape")
    assert "p:title" not in raw and "P" in raw
    fields = await store.lead_fields("old")
    assert orjson.loads(fields["p:title"]) == title
    assert orjson.loads(fields["p:size"])[1:3] == ["900.0", 15]  # values are kept as text
    assert float(fields["fit"]) == 35  # the legacy title's 20 and the new size's 15
    assert int(fields["bant"]) == 2 | 1  # and budget, from the size
