"""store.client on real servers: the session's Valkey (one node) and a 3-primary Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from streamscore import dev
from streamscore.config import load_settings
from streamscore.errors import ConfigError, ScriptError, TransientRedisError
from streamscore.store.client import (
    ClusterClient,
    LuaScript,
    RedisClient,
    SingleNodeClient,
    open_client,
    open_settings_client,
    pack_script_call,
)
from streamscore.store.errors import Failure, classify
from tests.conftest import RedisServer
from tests.integration.conftest import ClusterUnderTest

SET_ALL = LuaScript(
    "set_all.lua",
    """-- KEYS: any number, one slot; ARGV: value, then the tail
local value = ARGV[1]
for _, key in ipairs(KEYS) do
  redis.call('SET', key, value)
end
return {#KEYS, ARGV[#ARGV], #ARGV}
""",
)
INCR_FIRST = LuaScript("incr.lua", "return redis.call('INCR', KEYS[1])\n")


@pytest.fixture(params=["single", "cluster"])
async def client(
    request: pytest.FixtureRequest, redis_url: str, redis_cluster: ClusterUnderTest
) -> AsyncIterator[RedisClient]:
    """A client of the session's Valkey or of the cluster, both through open_client's detection."""
    url = redis_url if request.param == "single" else redis_cluster.url
    opened = await open_client(url)
    assert opened.cluster is (request.param == "cluster")
    yield opened
    await opened.close()


def tag() -> str:
    return uuid.uuid4().hex[:10]


def keys_of(group: str, count: int) -> list[str]:
    return [f"ct:{{{group}}}:k{i}" for i in range(count)]


async def test_a_script_call_writes_every_key_of_its_slot(client: RedisClient) -> None:
    keys = keys_of(tag(), 50)
    assert await client.run_script(SET_ALL, keys, ["v1"]) == [50, b"v1", 1]
    values = await client.execute("MGET", *keys, key=keys[0])
    assert values == [b"v1"] * 50


async def test_a_packed_call_takes_its_tail_argument_at_send_time(client: RedisClient) -> None:
    keys = keys_of(tag(), 5000)
    packed = pack_script_call(SET_ALL, keys, ["v2"])
    assert await client.run_packed(packed, 1_700_000_000_123) == [5000, b"1700000000123", 2]
    assert await client.run_packed(packed, b"again") == [5000, b"again", 2]
    assert await client.run_packed(packed) == [5000, b"v2", 1]
    assert await client.execute("GET", keys[-1], key=keys[-1]) == b"v2"


SLOW = LuaScript(
    "slow.lua",
    """-- KEYS[1]: written once ARGV[1] ms have passed on the server's clock
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end
local until_ms = now_ms() + tonumber(ARGV[1])
while now_ms() < until_ms do end
return redis.call('SET', KEYS[1], 'late')
""",
)


async def test_a_cancelled_call_leaves_no_reply_for_the_next_one(client: RedisClient) -> None:
    """Cancelled after it was sent, while the server still runs it: its reply must not be read
    by the next call (which would take the slow call's OK for its own counter)."""
    slow, counter = keys_of(tag(), 2)
    call = asyncio.ensure_future(client.run_script(SLOW, [slow], [100]))
    await asyncio.sleep(0.03)
    assert not call.done()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await client.run_script(INCR_FIRST, [counter], []) == 1
    assert await client.execute("GET", slow, key=slow) == b"late"


async def test_the_server_hashes_a_script_as_the_client_does(client: RedisClient) -> None:
    replies = await client.execute_on_primaries("SCRIPT", "LOAD", SET_ALL.source)
    assert set(replies.values()) == {SET_ALL.sha1.encode()}


async def test_a_flushed_node_gets_the_script_again(
    client: RedisClient, redis_cluster: ClusterUnderTest
) -> None:
    key = keys_of(tag(), 1)[0]
    await client.load_script(INCR_FIRST)  # on every primary
    assert await client.run_script(INCR_FIRST, [key], []) == 1
    loads = client.stats.script_loads
    if isinstance(client, ClusterClient):
        owner = client.node_of(key)
        assert owner is not None
        # Only the owner forgets it; the other primaries keep theirs.
        host, _, port = owner.rpartition(":")
        redis_cluster.admin.node(host, int(port)).script_flush()
        others = [n for n in client.primaries if n != owner]
        exists = await client.execute_on_primaries("SCRIPT", "EXISTS", INCR_FIRST.sha1)
        assert [exists[n] for n in others] == [[1]] * len(others)
    else:
        await client.execute_on_primaries("SCRIPT", "FLUSH")
    assert await client.run_script(INCR_FIRST, [key], []) == 2
    assert client.stats.script_loads == loads + 1


BROKEN = """-- KEYS[1]: a counter
local counter = KEYS[1]
local step = nil
redis.call('INCR', counter)
return step + 1 -- HERE: arithmetic on nil
"""


def line_of(source: str, marker: str) -> int:
    return next(i for i, line in enumerate(source.split("\n"), 1) if marker in line)


async def test_a_lua_error_names_the_script_file_and_line(client: RedisClient) -> None:
    script = LuaScript("broken.lua", BROKEN)
    with pytest.raises(ScriptError) as caught:
        await client.run_script(script, keys_of(tag(), 1), [])
    line = line_of(BROKEN, "HERE")
    assert (caught.value.file, caught.value.line) == ("broken.lua", line)
    assert str(caught.value).startswith(f"broken.lua:{line}: attempt to perform arithmetic")
    assert "user_script" not in str(caught.value)
    assert classify(caught.value) is Failure.FATAL  # the guard does not retry a bug


async def test_an_error_in_a_joined_file_names_that_file_and_its_own_line(
    client: RedisClient,
) -> None:
    helpers = "local function half(x)\n  return x / 2\nend\n"
    main = (
        "-- KEYS[1]\nlocal v = redis.call('GET', KEYS[1])\n"
        + "return redis.call('INCRBY', KEYS[1], 'x')\n"
    )
    script = LuaScript.join("main.lua", [("helpers.lua", helpers), ("main.lua", main)])
    with pytest.raises(ScriptError) as caught:
        await client.run_script(script, keys_of(tag(), 1), [])
    # A failing redis.call: Redis names only the line; the message is the command's error.
    assert (caught.value.file, caught.value.line) == ("main.lua", line_of(main, "INCRBY"))
    assert "not an integer" in caught.value.detail


async def test_a_syntax_error_names_the_file_and_line_at_load(client: RedisClient) -> None:
    source = "local a = 1\nlocal b = 2\nreturn (a +"
    with pytest.raises(ScriptError) as caught:
        await client.load_script(LuaScript("syntax.lua", source))
    assert (caught.value.file, caught.value.line) == ("syntax.lua", line_of(source, "return"))
    assert "unexpected symbol near '<eof>'" in caught.value.detail


async def test_keyed_commands_go_to_the_node_of_their_key(client: RedisClient) -> None:
    prefix = tag()
    groups = [f"{prefix}-g{n}" for n in range(9)]
    written: set[bytes] = set()
    for group in groups:
        hkey, zkey, xkey = (f"kc:{prefix}:{{{group}}}:{kind}" for kind in ("h", "z", "x"))
        assert await client.execute("HSET", hkey, "f", group, key=hkey) == 1
        assert await client.execute("HMGET", hkey, "f", "none", key=hkey) == [group.encode(), None]
        await client.execute("ZADD", zkey, 5, "a", 15, "b", key=zkey)
        assert await client.execute("ZRANGEBYSCORE", zkey, "-inf", 10, key=zkey) == [b"a"]
        first = await client.execute("XADD", xkey, "*", "o", b"\x00\xff", key=xkey)
        await client.execute("XADD", xkey, "*", "o", b"2", key=xkey)
        rows = await client.execute("XRANGE", xkey, "-", "+", key=xkey)
        assert [fields for _, fields in rows] == [[b"o", b"\x00\xff"], [b"o", b"2"]]
        assert await client.execute("XDEL", xkey, first, key=xkey) == 1
        assert await client.execute("XLEN", xkey, key=xkey) == 1
        written |= {hkey.encode(), zkey.encode(), xkey.encode()}
    found = [k async for k in client.scan_iter(f"kc:{prefix}:*", count=10)]
    assert set(found) == written
    if isinstance(client, ClusterClient):
        owners = {client.node_of(g) for g in groups}
        assert len(owners) > 1, "the groups should span primaries for this test to mean much"


async def test_ping_answers_for_every_primary(client: RedisClient) -> None:
    assert await client.ping()


async def test_a_single_node_client_of_a_cluster_says_so_when_redirected(
    redis_cluster: ClusterUnderTest,
) -> None:
    single = await open_client(redis_cluster.url, cluster=False)
    assert isinstance(single, SingleNodeClient)
    try:
        # Some of these groups live on other primaries than the URL's node.
        with pytest.raises(ConfigError, match="redis_cluster"):
            for group in range(16):
                await single.run_script(INCR_FIRST, [f"{{{tag()}-{group}}}"], [])
    finally:
        await single.close()


@pytest.mark.parametrize(
    ("server", "setting", "expected"),
    [
        ("single", "auto", SingleNodeClient),
        ("cluster", "auto", ClusterClient),
        ("cluster", "true", ClusterClient),
        ("cluster", "false", SingleNodeClient),
    ],
)
async def test_the_redis_cluster_setting_picks_the_client(
    redis_url: str, redis_cluster: ClusterUnderTest, server: str, setting: str, expected: type
) -> None:
    url = redis_url if server == "single" else redis_cluster.url
    opened = await open_settings_client(load_settings(redis_url=url, redis_cluster=setting))
    try:
        assert isinstance(opened, expected)
    finally:
        await opened.close()


async def test_a_cluster_url_may_name_several_nodes_and_starts_while_one_is_down(
    redis_cluster: ClusterUnderTest,
) -> None:
    live = redis_cluster.admin.primaries()[-1]
    url = f"redis://127.0.0.1:{dev.free_port()},{live.address}"  # nobody on the first
    opened = await open_client(url)
    try:
        assert isinstance(opened, ClusterClient)
        assert len(opened.primaries) == len(redis_cluster.admin.primaries())
        assert await opened.run_script(INCR_FIRST, keys_of(tag(), 1), []) == 1
    finally:
        await opened.close()
    with pytest.raises(ConfigError, match="several hosts"):
        await open_client(url, cluster=False)


async def test_a_cluster_client_of_a_single_server_says_so(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="not a cluster node"):
        await open_client(redis_url, cluster=True)


async def test_a_stopped_server_raises_the_transient_error_and_the_next_call_recovers(
    redis_server: RedisServer,
) -> None:
    """Calls to a server that is down fail as TransientRedisError; after it is back, they work
    again on the same client, the script loaded again on the empty server."""
    client = await open_client(redis_server.url)
    try:
        key = keys_of(tag(), 1)[0]
        assert await client.run_script(INCR_FIRST, [key], []) == 1
        redis_server.stop()
        with pytest.raises(TransientRedisError) as caught:
            await client.run_script(INCR_FIRST, [key], [])
        assert caught.value.reason == "connection"
        assert classify(caught.value) is Failure.TRANSIENT  # the guard retries it
        assert not await client.ping()
        redis_server.start()
        loads = client.stats.script_loads
        assert await client.run_script(INCR_FIRST, [key], []) == 1  # a fresh, empty server
        assert client.stats.script_loads == loads + 1
    finally:
        await client.close()
