"""Requests and events per second of `streamscore collector` for batch posts.

    python -m benchmarks.collector_bench                       # 10 s, 100-event batches, 8 conns
    python -m benchmarks.collector_bench --batch 20 --gzip --seconds 5

It starts the embedded Tansu broker and `streamscore collector` as a subprocess, both on free
ports, and is itself the load generator: `--connections` aiohttp clients post the same
`/v1/batch` body (`--batch` Segment-SDK-shaped track and page messages, each keyed by one of 1000
leads) back to back for `--seconds`. Every 200 means the broker acknowledged all its events;
afterwards the input topics' high watermarks must add up to the events answered 200. The
collector runs without the idempotent producer (Tansu 0.6 refuses aiokafka's); CPU is read from
/proc for the collector and the broker. Every process it started is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from base64 import b64encode
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.procstat import sample
from streamscore import dev
from streamscore.config import ENV_PREFIX, load_settings, settings_env
from streamscore.events import format_time_ms

KEY = "bench-key"
EVENTS = ("Demo Requested", "Form Submitted", "Email Link Clicked", "Content Downloaded")


def batch_body(size: int, seq: int) -> bytes:
    """A /v1/batch body as segment-analytics-python sends it (ids unique per body)."""
    now = format_time_ms(time.time_ns() // 1_000_000)
    messages: list[dict[str, Any]] = []
    for i in range(size):
        lead = f"lead-{(seq * size + i) % 1000}"
        common = {
            "userId": lead,
            "messageId": f"bench-{seq}-{i}",
            "timestamp": now,
            "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
            "integrations": {},
        }
        if i % 2:
            messages.append({**common, "type": "page", "properties": {"path": "/pricing"}})
        else:
            event = EVENTS[i // 2 % len(EVENTS)]
            messages.append({**common, "type": "track", "event": event, "properties": {"n": i}})
    return orjson.dumps({"batch": messages, "sentAt": now})


async def load(
    url: str, bodies: list[bytes], headers: dict[str, str], connections: int, seconds: float
) -> tuple[int, int, float, list[float]]:
    """Post bodies back to back; (ok requests, other answers, elapsed s, latencies of the oks)."""
    ok = failed = 0
    latencies: list[float] = []
    cycle = itertools.cycle(bodies)
    stop_at = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal ok, failed
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            async with session.post(url, data=next(cycle), headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    ok += 1
                    latencies.append(time.perf_counter() - started)
                else:
                    failed += 1

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        await asyncio.gather(*(client(session) for _ in range(connections)))
        return ok, failed, time.monotonic() - started, latencies


async def high_watermarks(bootstrap: str, topics: list[str], partitions: int) -> int:
    """Sum of the high watermarks of `topics`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return sum(ends.values())
    finally:
        await consumer.stop()


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """Until the collector's /readyz answers 200."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"collector exited ({proc.returncode})")
            try:
                async with session.get(url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("collector not ready")


def cpu_seconds(pid: int) -> float:
    """CPU seconds a live process has used."""
    found = sample(pid)
    return found.cpu_s if found else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=100, help="events per /v1/batch request")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--gzip", action="store_true", help="gzip the bodies, as Rudder's SDK")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    broker = dev.start_broker()
    port = dev.free_port()
    settings = load_settings(
        kafka_bootstrap=broker.bootstrap,
        topic_partitions=args.partitions,
        collector_port=port,
        collector_write_keys=KEY,
        collector_idempotent_producer=False,
        log_level="WARNING",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings_env(settings))
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "collector.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamscore.cli", "collector"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=dev.die_with_parent(os.getpid()),  # noqa: PLW1509
            )
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(wait_ready(url, proc))
            headers = {
                "Authorization": "Basic " + b64encode(f"{KEY}:".encode()).decode(),
                "Content-Type": "application/json",
            }
            bodies = [batch_body(args.batch, seq) for seq in range(200)]
            if args.gzip:
                bodies = [gzip.compress(b) for b in bodies]
                headers["Content-Encoding"] = "gzip"
            # Warm-up: connections, metadata, the producer's first batches.
            asyncio.run(load(url + "/v1/batch", bodies, headers, args.connections, 1.0))
            cpu_before = cpu_seconds(proc.pid), cpu_seconds(broker.pid)
            ok, failed, elapsed, latencies = asyncio.run(
                load(url + "/v1/batch", bodies, headers, args.connections, args.seconds)
            )
            cpu_after = cpu_seconds(proc.pid), cpu_seconds(broker.pid)
            topics = list(settings.input_topics)
            stored = asyncio.run(high_watermarks(broker.bootstrap, topics, args.partitions))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            broker.stop()
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
    events = ok * args.batch
    size = len(bodies[0])
    print(f"collector: {args.connections} connections posting /v1/batch of {args.batch} events "
          f"({size:,} bytes{', gzip' if args.gzip else ''}) for {elapsed:.1f} s")  # fmt: skip
    print(f"  requests/s: {ok / elapsed:,.0f} (200s: {ok:,}; other answers: {failed:,})")
    print(f"  events/s:   {events / elapsed:,.0f}")
    print(f"  latency of a 200 (broker acks included): p50 {percentile(latencies, 0.5) * 1e3:.1f} "
          f"ms, p99 {percentile(latencies, 0.99) * 1e3:.1f} ms")  # fmt: skip
    print(f"  CPU: collector {(cpu_after[0] - cpu_before[0]) / elapsed:.2f} cores, "
          f"broker {(cpu_after[1] - cpu_before[1]) / elapsed:.2f} cores")  # fmt: skip
    # Warm-up events are on the topics too, so stored >= events answered 200 in the window.
    print(f"  on the topics: {stored:,} records (>= the {events:,} answered 200 plus warm-up)")
    if stored < events or failed:
        print(tail, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
