"""Profile the worker's hot path in-process: ScoringWorker.run under cProfile for a while.

Configured by STREAMSCORE_* variables; argv: output file, seconds to profile, event target.
Once the first batch is applied (startup and group join left out), it first runs `seconds` / 2
unprofiled, timing garbage-collector pauses (gc.callbacks), then `seconds` under cProfile.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from streamscore.app import open_store
from streamscore.cli import tune_gc
from streamscore.config import load_settings
from streamscore.metrics import Metrics, create_metrics
from streamscore.runtime.kafka import make_producer
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.sensors import PrometheusSensor, Sensor
from streamscore.runtime.worker import ScoringWorker


class GcClock:
    """Wall time spent in garbage collection, by generation, while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.seconds = 0.0
        self.collections: Counter[int] = Counter()
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self.on:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1


def _applied(metrics: Metrics) -> float:
    total = 0.0
    for metric in metrics.events_total.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                total += s.value
    return total


async def run(
    seconds: float, target: int, clock: GcClock, plain: dict[str, float]
) -> tuple[cProfile.Profile, float, float]:
    """Run the worker, profile it for `seconds` or `target` events; (profile, events, s)."""
    settings = load_settings()
    metrics = create_metrics(process=False)
    rules = RulesHolder(settings.rules_file, Sensor(), settings.dedup_window_s)
    store = open_store(settings)
    producer = make_producer(settings)
    await producer.start()
    worker = ScoringWorker(
        settings, PrometheusSensor(metrics, settings.input_topics), rules, store, producer
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    profiler = cProfile.Profile()
    try:
        while _applied(metrics) == 0:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        # Unprofiled first: the real rate and the share of it the garbage collector takes.
        start_events = _applied(metrics)
        started = time.monotonic()
        clock.on = True
        while time.monotonic() - started < seconds / 2:
            if task.done():
                break
            await asyncio.sleep(0.05)
        clock.on = False
        plain["events"] = _applied(metrics) - start_events
        plain["seconds"] = time.monotonic() - started
        plain["gc_seconds"] = clock.seconds
        plain["gc_collections_gen2"] = clock.collections[2]
        plain["gc_tracked_objects"] = len(gc.get_objects())
        start_events = _applied(metrics)
        started = time.monotonic()
        profiler.enable()
        while time.monotonic() - started < seconds and _applied(metrics) - start_events < target:
            if task.done():
                break
            await asyncio.sleep(0.05)
        profiler.disable()
        events = _applied(metrics) - start_events
        elapsed = time.monotonic() - started
    finally:
        stopping.set()
        await task
        await producer.stop()
        await store.client.aclose()
    return profiler, events, elapsed


def _name(key: tuple[str, int, str]) -> str:
    path, line, func = key
    if path == "~":
        return func
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{line}({func})"


def main() -> None:
    """argv: output prefix, seconds, event target. Writes <prefix>.txt and <prefix>.json."""
    out, seconds, target = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    tune_gc()  # as `streamscore worker` does, or the collector's share reported is not its own
    clock = GcClock()
    gc.callbacks.append(clock)
    plain: dict[str, float] = {}
    profiler, events, elapsed = asyncio.run(run(seconds, target, clock, plain))
    buf = io.StringIO()
    if plain.get("seconds"):
        buf.write(
            f"unprofiled: {plain['events']:.0f} events in {plain['seconds']:.2f}s, gc pauses "
            f"{plain['gc_seconds']:.2f}s ({plain['gc_collections_gen2']:.0f} full collections, "
            f"{plain['gc_tracked_objects']:.0f} tracked objects)\n"
        )
    buf.write(f"events {events:.0f} in {elapsed:.2f}s under cProfile ({events / elapsed:.0f}/s)\n")
    stats = pstats.Stats(profiler, stream=buf)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(60)
    out.with_suffix(".txt").write_text(buf.getvalue())
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = [
        {
            "function": _name(key),
            "calls": nc,
            "tottime_s": tt,
            "cumtime_s": ct,
            "us_per_event_self": tt / events * 1e6 if events else 0.0,
            "us_per_event_cum": ct / events * 1e6 if events else 0.0,
        }
        for key, (_, nc, tt, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    summary = {
        "unprofiled": plain,
        "events": events,
        "seconds": elapsed,
        "events_per_s": events / elapsed if elapsed else 0.0,
        "profiled_cpu_s": total,
        "top_self": sorted(rows, key=lambda r: -r["tottime_s"])[:25],
        "top_cumulative": sorted(rows, key=lambda r: -r["cumtime_s"])[:40],
    }
    out.with_suffix(".json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
