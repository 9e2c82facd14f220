"""Cost of one 5,000-key script call: one Redis server vs a 3-primary Redis Cluster.

    python -m benchmarks.cluster_call [--keys 5000] [--calls 100] [--rounds 5]

Both sides run Debian's redis-server 7 (the cluster from tests/integration/cluster_support on
loopback). Each round runs `--calls` calls of each variant in turn, so that the machine's drift
hits them alike; the figures are medians over every call:

- packed: store.client's path (pack_script_call once, run_packed with a tail argument);
- redis-py: the same call through redis-py's own client (Redis.evalsha, RedisCluster.evalsha),
  which encodes the 5,000 keys on every call and, on a cluster, checks their slots in Python;
- pack: pack_script_call's time alone (hiredis, and the client's slot check);
- client CPU: this process's CPU time a call (time.process_time), what the routing costs;
- Redis time: INFO commandstats usec_per_call of evalsha on the server(s), which includes the
  cluster's own per-key slot check.

Two scripts: `noop.lua` (return #KEYS: the transport and key handling only) and `set.lua` (a SET
per key: some real work).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from streamscore import dev
from streamscore.store.client import LuaScript, RedisClient, open_client, pack_script_call
from tests.integration.cluster_support import LocalCluster, redis_server_binary

NOOP = LuaScript("noop.lua", "return #KEYS\n")
SET = LuaScript(
    "set.lua",
    "for _, key in ipairs(KEYS) do\n  redis.call('SET', key, ARGV[1])\nend\nreturn #KEYS\n",
)


async def timed(
    call: Callable[[], Awaitable[Any]], calls: int, out: list[float], cpu: dict[int, float]
) -> None:
    """Append each call's wall time to `out`; add this process's CPU time to cpu[0]."""
    cpu_started = time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        out.append(time.perf_counter() - started)
    cpu[0] = cpu.get(0, 0.0) + time.process_time() - cpu_started


async def redis_usec(client: RedisClient) -> tuple[int, float]:
    """(calls, usec) of EVALSHA summed over the primaries."""
    calls, usec = 0, 0.0
    for reply in (await client.execute_on_primaries("INFO", "commandstats")).values():
        for line in reply.decode().splitlines():
            if line.startswith("cmdstat_evalsha:"):
                fields = dict(item.split("=") for item in line.split(":", 1)[1].split(","))
                calls += int(fields["calls"])
                usec += float(fields["usec"])
    return calls, usec


async def measure(single_url: str, cluster_url: str, keys: int, calls: int, rounds: int) -> None:
    names = [f"bench:{{g0}}:lead:{i:024x}" for i in range(keys)]
    clients = {"single": await open_client(single_url), "cluster": await open_client(cluster_url)}
    plain: dict[str, Any] = {
        "single": aioredis.Redis.from_url(single_url),
        "cluster": RedisCluster.from_url(cluster_url),
    }
    try:
        for script in (NOOP, SET):
            wall: dict[str, list[float]] = {}
            cpu: dict[str, dict[int, float]] = {}
            server: dict[str, tuple[int, float]] = {}
            pack_s: list[float] = []
            for client in clients.values():
                await client.load_script(script)
                await client.execute_on_primaries("CONFIG", "RESETSTAT")
            for _ in range(rounds):
                for name, client in clients.items():
                    started = time.perf_counter()
                    packed = pack_script_call(script, names, ["value"])
                    pack_s.append(time.perf_counter() - started)
                    await timed(
                        lambda c=client, p=packed: c.run_packed(p, 1_760_000_000_000),  # type: ignore[misc]
                        calls,
                        wall.setdefault(f"packed {name}", []),
                        cpu.setdefault(f"packed {name}", {}),
                    )
                    await timed(
                        lambda r=plain[name], sha=script.sha1: r.evalsha(
                            sha, keys, *names, "value", 1
                        ),  # type: ignore[misc]
                        calls,
                        wall.setdefault(f"redis-py {name}", []),
                        cpu.setdefault(f"redis-py {name}", {}),
                    )
            for name, client in clients.items():
                server[name] = await redis_usec(client)
            print(f"\n{script.name}, {keys} keys, {rounds} x {calls} calls of each variant")
            print(f"  pack_script_call: {statistics.median(pack_s) * 1e3:.2f} ms (median)")
            for label, samples in wall.items():
                samples.sort()
                p90 = samples[int(len(samples) * 0.9)]
                client_cpu = cpu[label][0] / len(samples)
                print(
                    f"  {label:18s} {statistics.median(samples) * 1e3:6.2f} ms median, "
                    f"{p90 * 1e3:6.2f} ms p90, client CPU {client_cpu * 1e3:5.2f} ms a call"
                )
            for name, (count, usec) in server.items():
                print(f"  Redis time {name:8s} {usec / count / 1e3:6.2f} ms a call ({count} calls)")
    finally:
        for client in clients.values():
            await client.close()
        for raw in plain.values():
            await raw.aclose()


def main() -> None:
    """Start one server and a 3-primary cluster, measure, stop them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    single = dev.start_valkey(binary=redis_server_binary())
    try:
        cluster = LocalCluster.start(primaries=3)
        try:
            asyncio.run(
                measure(single.url, cluster.url, options.keys, options.calls, options.rounds)
            )
        finally:
            cluster.stop()
    finally:
        single.stop()


if __name__ == "__main__":
    main()
