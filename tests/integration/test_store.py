"""commit.lua on real servers: it writes a group's share of a batch at once, or nothing at all."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from importlib import resources

import pytest
import redis.exceptions as redis_errors

from streamscore.errors import ScriptError
from streamscore.scoring.outputs import Output
from streamscore.store.client import open_client, pack_script_call
from streamscore.store.commit import (
    COMMIT_LUA,
    LAYOUT_PLACEHOLDER,
    DeleteWrite,
    GroupCommit,
    LeadWrite,
    OffsetWrite,
    OutboxRewrite,
    layout_line,
    versioned,
)
from streamscore.store.errors import Failure, classify
from streamscore.store.keys import KeySpace
from streamscore.store.outbox import decode_outputs, encode_outputs
from streamscore.store.store import RedisStore
from tests.integration.conftest import ClusterUnderTest

OUTPUT = Output(
    "handoff", "lead-1", 1, "warm", "hot", 91.5, 70.0, 21.5, 2, 3, (("trial", 25.0),),
    "evt-1", 1_760_000_000_000, "event", "rules-1",
)  # fmt: skip


@pytest.fixture(params=["single", "cluster"])
async def store(
    request: pytest.FixtureRequest, redis_url: str, redis_cluster: ClusterUnderTest
) -> AsyncIterator[RedisStore]:
    """A store with its own key prefix, on the session's server or on the 3-primary cluster."""
    cluster = request.param == "cluster"
    client = await open_client(redis_cluster.url if cluster else redis_url, cluster=cluster)
    store = RedisStore(client, KeySpace(f"st:{uuid.uuid4().hex[:8]}", groups=3 if cluster else 1))
    yield store
    await store.close()


def lead_write(
    store: RedisStore, lead_id: str, version: int, expected: bytes, due: int
) -> LeadWrite:
    """A write of lead `lead_id`'s value `version`, fenced on `expected`, due at `due`."""
    ref = store.keys.lead_ref(lead_id)
    return LeadWrite(
        store.keys.lead(ref),
        expected,
        versioned(version, f"state of {lead_id} v{version}".encode()),
        ((store.keys.due(ref.group, 2), due),),
    )


def group_of(store: RedisStore, lead_id: str) -> int:
    return store.keys.lead_ref(lead_id).group


async def test_a_commit_writes_leads_offsets_due_sets_counters_and_outputs(
    store: RedisStore,
) -> None:
    g = group_of(store, "lead-1")
    commit = GroupCommit(g)
    commit.leads.append(lead_write(store, "lead-1", 1, b"", 5_000))
    commit.offsets.append(OffsetWrite("page-views:2", None, 41))
    commit.counters["handoffs|hot"] = 2
    result = await store.commit(commit.pack(store.keys), encode_outputs([OUTPUT], 123))
    assert result.ok and result.outbox_entry

    assert await store.read_lead("lead-1") == versioned(1, b"state of lead-1 v1")
    assert await store.recorded_offsets(["page-views:2"]) == {(g, "page-views:2"): 41}
    assert await store.due_keys(g, 2, 5_000, 10) == [commit.leads[0].key]
    assert await store.due_keys(g, 2, 4_999, 10) == []
    assert await store.kpi_counters() == {"handoffs|hot": 2}
    [(entry, encoded)] = await store.pending_outbox(g, 2**62)
    assert entry == result.outbox_entry
    assert decode_outputs(encoded) == [(OUTPUT, 123)]


async def test_a_stale_offset_or_lead_writes_nothing(store: RedisStore) -> None:
    g = group_of(store, "lead-1")
    first = GroupCommit(g)
    first.leads.append(lead_write(store, "lead-1", 1, b"", 5_000))
    first.offsets.append(OffsetWrite("page-views:2", None, 41))
    packed = first.pack(store.keys)
    assert (await store.commit(packed, b"")).ok
    # The same call again (a retry of a call that had in fact been applied): the offset moved.
    again = await store.commit(packed, encode_outputs([OUTPUT], 1))
    assert not again.ok and again.conflict == "offset page-views:2"

    # An offset that is right but a lead that another writer changed meanwhile.
    second = GroupCommit(g)
    second.leads.append(lead_write(store, "lead-1", 2, b"", 9_000))  # expects it absent
    second.offsets.append(OffsetWrite("page-views:2", 41, 50))
    second.counters["handoffs|hot"] = 1
    result = await store.commit(second.pack(store.keys), encode_outputs([OUTPUT], 1))
    assert not result.ok and result.conflict.startswith("lead ")

    # Nothing of either refused call was written.
    assert await store.read_lead("lead-1") == versioned(1, b"state of lead-1 v1")
    assert await store.recorded_offsets(["page-views:2"]) == {(g, "page-views:2"): 41}
    assert await store.due_keys(g, 2, 10_000, 10) == [first.leads[0].key]
    assert await store.kpi_counters() == {}
    assert await store.pending_outbox(g, 2**62) == []

    # Fenced on what it really holds, it goes through; the due entry moves to another set.
    ref = store.keys.lead_ref("lead-1")
    third = GroupCommit(g)
    third.leads.append(
        LeadWrite(
            store.keys.lead(ref),
            versioned(1, b"")[:8],
            versioned(2, b"v2"),
            ((store.keys.due(g, 3), 7_000), (store.keys.tier_index(g, "hot"), 91.5)),
            (store.keys.due(g, 2),),
        )
    )
    third.offsets.append(OffsetWrite("page-views:2", 41, 50))
    assert (await store.commit(third.pack(store.keys), b"")).ok
    assert await store.due_keys(g, 2, 10_000, 10) == []
    assert await store.due_keys(g, 3, 10_000, 10) == [store.keys.lead(ref)]
    assert await store.tier_queue(g, "hot", 10) == [(store.keys.lead(ref), 91.5)]


async def test_a_delete_removes_the_lead_everywhere_and_records_it_as_forgotten(
    store: RedisStore,
) -> None:
    ref = store.keys.lead_ref("lead-1")
    g, key = ref.group, store.keys.lead(ref)
    first = GroupCommit(g)
    first.leads.append(lead_write(store, "lead-1", 1, b"", 5_000))
    first.leads.append(
        LeadWrite(f"{key}-other", b"", versioned(1, b"x"), ((store.keys.due(g, 2), 6_000),))
    )
    first.offsets.append(OffsetWrite("page-views:2", None, 41))
    pending = await store.commit(first.pack(store.keys), encode_outputs([OUTPUT], 1))
    other = OUTPUT._replace(lead_id="lead-2")
    kept = await store.commit(GroupCommit(g).pack(store.keys), encode_outputs([other], 2))
    assert pending.ok and kept.ok

    # The delete is fenced like a write: a stale prefix conflicts and nothing is deleted.
    stale = GroupCommit(g)
    stale.deletes.append(DeleteWrite(key, b"", ref.digest, (store.keys.due(g, 2),)))
    stale.rewrites.append(OutboxRewrite(pending.outbox_entry, b""))
    result = await store.commit(stale.pack(store.keys), encode_outputs([OUTPUT], 3))
    assert not result.ok and result.conflict == f"lead {key}"
    assert await store.read_lead("lead-1") is not None
    assert len(await store.pending_outbox(g, 2**62)) == 2
    assert await store.forgotten_digests() == set()

    forget = GroupCommit(g)
    forget.deletes.append(
        DeleteWrite(key, versioned(1, b"")[:8], ref.digest, (store.keys.due(g, 2),))
    )
    forget.offsets.append(OffsetWrite("forget:0", None, 7))
    # The lead's pending entry goes; an entry already acknowledged stays gone.
    forget.rewrites.append(OutboxRewrite(pending.outbox_entry, encode_outputs([], 0)))
    forget.rewrites.append(OutboxRewrite("1-1", encode_outputs([other], 9)))
    result = await store.commit(forget.pack(store.keys), b"tombstone")
    assert result.ok
    assert await store.read_lead("lead-1") is None
    assert await store.due_keys(g, 2, 10_000, 10) == [f"{key}-other"]
    assert await store.forgotten_digests() == {ref.digest}
    entries = await store.pending_outbox(g, 2**62)
    assert [e for e, _ in entries] == [kept.outbox_entry, result.outbox_entry]
    assert [v for _, v in entries] == [encode_outputs([other], 2), b"tombstone"]
    # Deleting what is absent (fenced on "absent") is fine, and the set keeps one member.
    again = GroupCommit(g)
    again.deletes.append(DeleteWrite(key, b"", ref.digest))
    assert (await store.commit(again.pack(store.keys), b"")).ok
    assert await store.forgotten_digests() == {ref.digest}


async def test_an_outbox_rewrite_replaces_a_pending_entry(store: RedisStore) -> None:
    g = group_of(store, "lead-1")
    pending = await store.commit(GroupCommit(g).pack(store.keys), encode_outputs([OUTPUT], 1))
    rewrite = GroupCommit(g)
    smaller = encode_outputs([OUTPUT._replace(seq=2)], 1)
    rewrite.rewrites.append(OutboxRewrite(pending.outbox_entry, smaller))
    assert (await store.commit(rewrite.pack(store.keys), b"")).ok
    [(entry, value)] = await store.pending_outbox(g, 2**62)
    assert entry != pending.outbox_entry and value == smaller


async def test_a_flushed_script_is_loaded_again(store: RedisStore) -> None:
    await store.client.execute_on_primaries("SCRIPT", "FLUSH")
    commit = GroupCommit(group_of(store, "lead-9"))
    commit.leads.append(lead_write(store, "lead-9", 1, b"", 1))
    assert (await store.commit(commit.pack(store.keys), b"")).ok


async def test_out_of_memory_is_backpressure_and_writes_nothing(
    redis_url: str, redis_server: object
) -> None:
    client = await open_client(redis_url, cluster=False)
    store = RedisStore(client, KeySpace(f"oom:{uuid.uuid4().hex[:8]}"))
    try:
        await client.execute("SET", f"{store.keys.prefix}:ballast", b"x" * 200_000, key="x")
        used = int(
            re.search(rb"used_memory:(\d+)", await client.execute("INFO", "memory", key="x"))[1]  # type: ignore[index]
        )
        await client.execute("CONFIG", "SET", "maxmemory", used - 100_000, key="x")
        commit = GroupCommit(0)
        commit.leads.append(lead_write(store, "lead-1", 1, b"", 1))
        commit.offsets.append(OffsetWrite("t:0", None, 1))
        packed = commit.pack(store.keys)
        with pytest.raises(redis_errors.ResponseError) as info:
            await store.commit(packed, b"")
        assert classify(info.value) is Failure.BACKPRESSURE, info.value
        assert await store.read_lead("lead-1") is None
        assert await store.recorded_offsets(["t:0"]) == {}
        await client.execute("CONFIG", "SET", "maxmemory", 0, key="x")
        assert (await store.commit(packed, b"")).ok  # the same call, once memory is back
    finally:
        await client.execute("CONFIG", "SET", "maxmemory", 0, key="x")
        await store.close()


def test_the_layout_comes_from_python_and_keeps_commit_lua_lines() -> None:
    """commit.lua does not define the layout itself: store/commit.py generates it (no drift)."""
    text = (resources.files("streamscore.store") / "scripts" / "commit.lua").read_text("utf-8")
    lines = text.split("\n")
    assert lines[0] == "#!lua"
    assert lines[1].startswith(LAYOUT_PLACEHOLDER)
    for name in (
        "FIXED_KEYS", "COUNT_ARGS", "TP_ARGS", "LEAD_ARGS", "COUNTER_ARGS", "DELETE_ARGS",
        "REWRITE_ARGS",
    ):  # fmt: skip
        assert not re.search(rf"local[^\n]*\b{name}\b[^\n]*=", text), name
        assert re.search(rf"\b{name}\b", text), f"commit.lua no longer uses {name}"
    loaded = COMMIT_LUA.source.split("\n")
    assert loaded[1] == layout_line()
    assert len(loaded) == len(lines) and loaded[2:] == lines[2:]


async def test_a_lua_error_names_commit_lua_and_its_line(redis_url: str) -> None:
    client = await open_client(redis_url, cluster=False)
    try:
        # One lead announced and no lead arguments given: its counts read as nil.
        packed = pack_script_call(
            COMMIT_LUA, ["{t}o", "{t}x", "{t}k", "{t}f", "{t}lead"], [0, 0, 1, 0, 0, 0, ""]
        )
        with pytest.raises(ScriptError) as info:
            await client.run_packed(packed, b"")
    finally:
        await client.close()
    text = (resources.files("streamscore.store") / "scripts" / "commit.lua").read_text("utf-8")
    expected = 1 + text.split("\n").index(
        next(line for line in text.split("\n") if "a = a + LEAD_ARGS" in line)
    )
    assert (info.value.file, info.value.line) == ("commit.lua", expected), info.value
