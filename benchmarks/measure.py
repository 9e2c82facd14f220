"""Time one consumer (a child process) over the pre-produced topics, from Redis offsets."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from benchmarks.children import Child
from benchmarks.procstat import ProcSample, sample, system_busy_s
from streamscore.store.keys import KeySpace

POLL_S = 0.02


class RunFailed(RuntimeError):
    """A measured child exited, or never started applying."""


@dataclass
class RunResult:
    """What one measured run did, over its measurement window."""

    name: str
    label: str
    events: int  # events applied inside the window
    seconds: float
    events_per_s: float
    cpu_s: float  # child CPU seconds inside the window
    cpu_total_s: float  # child CPU seconds from start to stop, startup included
    peak_rss_mb: float
    valkey_cpu_s: float
    broker_cpu_s: float
    others_cpu_s: float  # CPU used inside the window by processes outside this benchmark
    completed: bool
    applied_total: int
    applied_at_first_seen: int
    startup_s: float
    exit_code: int | None
    note: str = ""
    prefix: str = ""  # Redis key prefix of the state it left
    child_metrics: dict[str, float] | None = None  # scraped from the child before it stopped
    # Redis time by command inside the window (INFO commandstats): {command: [calls, seconds]};
    # commands a script runs are counted under their own names as well as in EVALSHA's time.
    redis_commands: dict[str, list[float]] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class _Mark:
    t: float
    applied: int
    child: ProcSample
    valkey: ProcSample | None
    broker: ProcSample | None
    own: ProcSample | None
    busy_s: float
    commands: dict[str, tuple[int, int]]


def applied_count(client: redis.Redis, keyspace: KeySpace) -> int:
    """Events applied so far: sum of (last applied offset + 1) over partitions.

    Exact while every event is valid and unique (so every offset is applied) and each partition
    is applied in offset order, which holds for all three consumers.
    """
    total = 0
    for group in range(keyspace.groups):
        for off in client.hgetall(keyspace.offsets(group)).values():
            total += int(off) + 1
    return total


def redis_offsets_progress(client: redis.Redis, keyspace: KeySpace) -> Callable[[], int]:
    """Progress of a consumer that records its offsets as streamscore does."""
    return lambda: applied_count(client, keyspace)


def offsets_hash_progress(client: redis.Redis, key: str) -> Callable[[], int]:
    """Progress of a consumer that keeps (last applied offset) per partition in one hash."""
    return lambda: sum(int(off) + 1 for off in client.hgetall(key).values())


def file_progress(path: Path) -> Callable[[], int]:
    """Progress of a child that writes its count of processed events to a file."""

    def read() -> int:
        try:
            return int(path.read_text() or 0)
        except (OSError, ValueError):
            return 0

    return read


def measure(
    name: str,
    label: str,
    child: Child,
    client: redis.Redis,
    progress: Callable[[], int],
    total: int,
    valkey_pid: int,
    broker_pid: int,
    *,
    max_window_s: float | None = None,
    start_timeout_s: float = 120.0,
    stall_timeout_s: float = 60.0,
    note: str = "",
    scrape: Callable[[], dict[str, float]] | None = None,
) -> RunResult:
    """Poll `progress` until `total` events are applied (or the window ends); leaves it running.

    The window opens when progress first shows; the events counted are those applied after
    that first sighting, so startup, group join and the first batch are excluded. `client` is
    the Redis server's, for its command statistics. The caller stops the child (after letting
    its last outputs out).
    """

    def mark(applied: int) -> _Mark:
        child_sample = child.sample()
        if child_sample is None:
            raise RunFailed(f"{name}: child exited:\n{child.log_tail()}")
        return _Mark(
            time.monotonic(),
            applied,
            child_sample,
            sample(valkey_pid),
            sample(broker_pid),
            sample(os.getpid()),
            system_busy_s(),
            command_stats(client),
        )

    first: _Mark | None = None
    last_progress = (time.monotonic(), 0)
    completed = False
    while True:
        applied = progress()
        now = time.monotonic()
        if not child.alive():
            raise RunFailed(f"{name}: exited with {child.proc.returncode}:\n{child.log_tail()}")
        if first is None:
            if applied > 0:
                first = mark(applied)
                last_progress = (now, applied)
            elif now - child.started > start_timeout_s:
                raise RunFailed(
                    f"{name}: nothing applied in {start_timeout_s}s:\n{child.log_tail()}"
                )
        if first is not None:
            if applied >= total:
                completed = True
                break
            if applied != last_progress[1]:
                last_progress = (now, applied)
            elif now - last_progress[0] > stall_timeout_s:
                note = f"{note}; stalled at {applied}/{total}".lstrip("; ")
                break
            if max_window_s is not None and now - first.t >= max_window_s:
                break
        time.sleep(POLL_S)
    end = mark(applied)
    scraped = None
    if scrape is not None:
        try:
            scraped = scrape()
        except OSError:
            scraped = None
    valkey_cpu = _delta(first.valkey, end.valkey)
    broker_cpu = _delta(first.broker, end.broker)
    seconds = end.t - first.t
    events = end.applied - first.applied
    child_cpu = end.child.cpu_s - first.child.cpu_s
    ours = child_cpu + valkey_cpu + broker_cpu + _delta(first.own, end.own)
    return RunResult(
        name=name,
        label=label,
        events=events,
        seconds=seconds,
        events_per_s=events / seconds if seconds > 0 else 0.0,
        cpu_s=child_cpu,
        cpu_total_s=end.child.cpu_s,
        peak_rss_mb=end.child.peak_rss_mb,
        valkey_cpu_s=valkey_cpu,
        broker_cpu_s=broker_cpu,
        others_cpu_s=max(end.busy_s - first.busy_s - ours, 0.0),
        completed=completed,
        applied_total=end.applied,
        applied_at_first_seen=first.applied,
        startup_s=first.t - child.started,
        exit_code=None,
        note=note,
        child_metrics=scraped,
        redis_commands=_command_delta(first.commands, end.commands),
    )


def command_stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Calls and microseconds per command since the server started."""
    info: dict[str, Any] = client.info("commandstats")
    return {
        key.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
        for key, v in info.items()
        if key.startswith("cmdstat_")
    }


def _command_delta(
    first: dict[str, tuple[int, int]], end: dict[str, tuple[int, int]]
) -> dict[str, list[float]]:
    delta = {}
    for name, (calls, usec) in end.items():
        calls0, usec0 = first.get(name, (0, 0))
        if calls > calls0:
            delta[name] = [calls - calls0, (usec - usec0) / 1e6]
    return dict(sorted(delta.items(), key=lambda kv: -kv[1][1]))


def _delta(a: ProcSample | None, b: ProcSample | None) -> float:
    if a is None or b is None:
        return float("nan")
    return b.cpu_s - a.cpu_s


def expected_total(counts: Mapping[Any, int]) -> int:
    """Events in the workload."""
    return sum(counts.values())
