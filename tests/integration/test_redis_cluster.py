"""ClusterClient while the cluster changes under it: slot migration (MOVED, ASK, TRYAGAIN) and the
SIGKILL of a primary whose replica is promoted."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from streamscore.errors import TransientRedisError
from streamscore.store.client import (
    MAX_REDIRECTS,
    ClusterClient,
    LuaScript,
    open_client,
    pack_script_call,
)
from streamscore.store.errors import Failure, classify
from tests.integration.cluster_support import ClusterAdmin, NodeRow, raw_command
from tests.integration.conftest import ClusterUnderTest

INCR_ALL = LuaScript(
    "incr_all.lua",
    """-- KEYS: counters of one slot; ARGV: none, or a tail that is returned last
local values = {}
for i, key in ipairs(KEYS) do
  values[i] = redis.call('INCR', key)
end
values[#values + 1] = ARGV[#ARGV] or false
return values
""",
)


@pytest.fixture
async def client(redis_cluster: ClusterUnderTest) -> AsyncIterator[ClusterClient]:
    """A fresh cluster client for each test (its own slot map and counters)."""
    opened = await open_client(redis_cluster.url, cluster=True)
    assert isinstance(opened, ClusterClient)
    yield opened
    await opened.close()


def counters(count: int) -> list[str]:
    group = uuid.uuid4().hex[:10]
    return [f"mig:{{{group}}}:c{i}" for i in range(count)]


def other_primary(admin: ClusterAdmin, owner: NodeRow) -> NodeRow:
    return next(row for row in admin.primaries() if row.node_id != owner.node_id)


async def incr(client: ClusterClient, keys: list[str]) -> list[int]:
    values = await client.run_script(INCR_ALL, keys, [])
    assert values[-1] is None
    return [int(v) for v in values[:-1]]


async def test_a_call_follows_moved_to_the_new_owner_and_then_goes_there_directly(
    client: ClusterClient, redis_cluster: ClusterUnderTest
) -> None:
    admin = redis_cluster.admin
    keys = counters(20)
    assert await incr(client, keys) == [1] * 20
    slot = admin.keyslot(keys[0])
    target = other_primary(admin, admin.owner(slot))
    admin.move_slot(slot, target)

    moved = client.stats.moved
    assert await incr(client, keys) == [2] * 20  # the migrated values, on the new owner
    assert client.stats.moved == moved + 1
    assert client.node_of(keys[0]) == target.address
    assert await incr(client, keys) == [3] * 20
    assert client.stats.moved == moved + 1  # the refreshed map sends it there at once


async def test_a_call_follows_ask_while_its_slot_migrates(
    client: ClusterClient, redis_cluster: ClusterUnderTest
) -> None:
    admin = redis_cluster.admin
    keys = counters(20)
    assert await incr(client, keys) == [1] * 20
    slot = admin.keyslot(keys[0])
    source = admin.owner(slot)
    target = other_primary(admin, source)
    admin.begin_migration(slot, source, target)
    assert admin.migrate_keys(slot, source, target) >= 20

    # The source no longer has the keys: ASK, and the target serves this one call.
    packed = pack_script_call(INCR_ALL, keys, [])
    for expected in (2, 3):
        asked, moved = client.stats.asked, client.stats.moved
        values = await client.run_packed(packed, "tail")
        assert values == [expected] * 20 + [b"tail"]
        assert (client.stats.asked, client.stats.moved) == (asked + 1, moved)
        assert client.node_of(keys[0]) == source.address  # ASK leaves the map alone

    admin.finish_migration(slot, target)
    assert await incr(client, keys) == [4] * 20
    assert client.node_of(keys[0]) == target.address


async def test_a_call_whose_keys_are_split_by_a_migration_is_transient(
    client: ClusterClient, redis_cluster: ClusterUnderTest
) -> None:
    admin = redis_cluster.admin
    keys = counters(10)
    assert await incr(client, keys) == [1] * 10
    slot = admin.keyslot(keys[0])
    source = admin.owner(slot)
    target = other_primary(admin, source)
    admin.begin_migration(slot, source, target)
    admin.migrate_keys(slot, source, target, only=keys[:5])

    with pytest.raises(TransientRedisError) as caught:
        await incr(client, keys)
    assert caught.value.reason == "tryagain"
    assert classify(caught.value) is Failure.TRANSIENT

    admin.migrate_keys(slot, source, target)
    admin.finish_migration(slot, target)
    assert await incr(client, keys) == [2] * 10  # nothing ran twice, nothing was lost


async def test_a_redirect_loop_ends_after_the_bound_as_a_transient_error(
    client: ClusterClient, redis_cluster: ClusterUnderTest
) -> None:
    """Its owner MIGRATING the slot to a node never set IMPORTING (the steps in the wrong
    order): the owner answers ASK, the target MOVED back, and so on. The call gives up after
    MAX_REDIRECTS, as a transient error, and works once the slot is STABLE again."""
    admin = redis_cluster.admin
    keys = counters(3)  # not written yet: the migrating owner ASKs for missing keys
    slot = admin.keyslot(keys[0])
    source = admin.owner(slot)
    target = other_primary(admin, source)
    raw_command(admin.at(source), "CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    try:
        with pytest.raises(TransientRedisError) as caught:
            await incr(client, keys)
        assert caught.value.reason == "redirects"
        assert classify(caught.value) is Failure.TRANSIENT
        assert client.stats.asked + client.stats.moved == MAX_REDIRECTS + 1
    finally:
        raw_command(admin.at(source), "CLUSTER", "SETSLOT", slot, "STABLE")
    assert await incr(client, keys) == [1] * 3


async def test_a_killed_primary_s_calls_are_transient_until_its_replica_is_promoted(
    redis_cluster_with_replicas: ClusterUnderTest,
) -> None:
    """SIGKILL a primary: calls to its slots fail as TransientRedisError, and once its replica
    is promoted (CLUSTER FAILOVER FORCE), the caller's retry reaches it with the data intact."""
    cluster = redis_cluster_with_replicas
    local, admin = cluster.require_local(), cluster.admin
    # Seeded by a live primary: an earlier test may have killed the URL's node.
    client = await open_client(admin.url_of(admin.primaries()[0]), cluster=True)
    assert isinstance(client, ClusterClient)
    try:
        primary, replica = primary_with_replica(admin)
        keys = counters(100)
        while not primary.serves(admin.keyslot(keys[0])):
            keys = counters(100)
        packed = pack_script_call(INCR_ALL, keys, [])
        assert await client.run_packed(packed, "t1") == [1] * 100 + [b"t1"]
        # The write is on the replica before the kill (replication is asynchronous).
        assert raw_command(admin.at(primary), "WAIT", 1, 5000) >= 1
        local.kill(primary.port)

        with pytest.raises(TransientRedisError):
            await client.run_packed(packed, "t2")

        raw_command(admin.at(replica), "CLUSTER", "FAILOVER", "FORCE")
        errors: list[TransientRedisError] = []
        deadline = time.monotonic() + 30
        while True:
            try:
                values = await client.run_packed(packed, "t3")
                break
            except TransientRedisError as exc:  # anything else fails the test
                errors.append(exc)
                assert time.monotonic() < deadline, f"no primary after 30 s: {errors[-3:]}"
                await asyncio.sleep(0.05)
        assert values == [2] * 100 + [b"t3"]
        assert client.node_of(keys[0]) == replica.address
        assert {e.reason for e in errors} <= {"connection", "clusterdown", "topology", "redirects"}
        assert {classify(e) for e in errors} == {Failure.TRANSIENT}
        assert await client.ping()
    finally:
        await client.close()


async def test_while_a_failed_primary_is_not_replaced_every_call_is_transient_clusterdown(
    redis_cluster_with_replicas: ClusterUnderTest,
) -> None:
    """A primary killed and its replica told not to fail over: once the cluster marks it
    failed, the nodes refuse every call (cluster-require-full-coverage), and the client says
    so as TransientRedisError("clusterdown"), even for slots on live primaries. A takeover by
    the replica ends it."""
    cluster = redis_cluster_with_replicas
    local, admin = cluster.require_local(), cluster.admin
    # Seeded by a live primary: an earlier test may have killed the URL's node.
    client = await open_client(admin.url_of(admin.primaries()[0]), cluster=True)
    assert isinstance(client, ClusterClient)
    try:
        victim, replica = primary_with_replica(admin)
        keys = counters(5)
        while victim.serves(admin.keyslot(keys[0])):  # keys on a primary that stays up
            keys = counters(5)
        assert await incr(client, keys) == [1] * 5
        raw_command(admin.at(replica), "CONFIG", "SET", "cluster-replica-no-failover", "yes")
        local.kill(victim.port)
        witness = next(p for p in admin.primaries() if p.node_id != victim.node_id)
        deadline = time.monotonic() + 30
        while b"cluster_state:fail" not in raw_command(admin.at(witness), "CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the cluster never marked the primary failed"
            await asyncio.sleep(0.05)

        with pytest.raises(TransientRedisError) as caught:
            await incr(client, keys)
        assert caught.value.reason == "clusterdown"
        assert classify(caught.value) is Failure.TRANSIENT

        raw_command(admin.at(replica), "CLUSTER", "FAILOVER", "TAKEOVER")
        raw_command(admin.at(replica), "CONFIG", "SET", "cluster-replica-no-failover", "no")
        while True:
            try:
                assert await incr(client, keys) == [2] * 5
                break
            except TransientRedisError as exc:
                assert time.monotonic() < deadline, f"still down after 30 s: {exc}"
                await asyncio.sleep(0.05)
    finally:
        await client.close()


def primary_with_replica(admin: ClusterAdmin) -> tuple[NodeRow, NodeRow]:
    """A live primary that has a live replica, and that replica."""
    rows = admin.nodes()
    for primary in admin.primaries():
        for row in rows:
            if row.primary_id == primary.node_id and not row.failed:
                return primary, row
    raise AssertionError("no primary has a live replica left")
