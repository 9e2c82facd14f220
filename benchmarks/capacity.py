"""Capacity model: the worker's and Redis's CPU per event, throughput of 1-3 workers on a
3-primary Redis Cluster, and the workers and primaries a target rate needs.

    python -m benchmarks.capacity                  # 200,000 events, 1/2/3 workers, both rules
    python -m benchmarks.capacity --events 50000 --workers 1   # a quick look

It starts its own Tansu broker and a 3-primary Redis Cluster (Debian's redis-server, from
tests/integration/cluster_support), produces one seeded workload (benchmarks/workload.py: five
input topics of --partitions partitions, Zipf-like activity over 30 days, keyed by lead id)
and replays it from the start for each rules file and worker count: a fresh consumer group, a
fresh key prefix on emptied primaries, N `streamscore worker` processes in one group with
--key-groups hash-tag groups. The window opens at the first applied offset and closes when
every offset is applied; CPU seconds are read from /proc for the workers, each primary and the
broker over the window. Everything it started is stopped by PID.

The machine it runs on is the limit: on 2 cores, the workers, three primaries and the broker
share two cores, so more workers cannot show more throughput; the CPU each component spends per
event is what carries to a bigger machine, and `plan()` turns it into processes and primaries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.children import REPO_ROOT, Child
from benchmarks.kafkaio import produce_all
from benchmarks.procstat import code_version, machine_info, sample, system_busy_s
from benchmarks.workload import build_workload
from streamscore import dev
from streamscore.config import Settings, load_settings
from streamscore.runtime.kafka import ensure_topics
from streamscore.store.client import open_client
from streamscore.store.keys import KeySpace
from streamscore.store.store import RedisStore
from tests.integration.cluster_support import LocalCluster

EXAMPLE_RULES = REPO_ROOT / "examples" / "rules.yaml"
SIMPLE_RULES = REPO_ROOT / "benchmarks" / "simple_rules.yaml"
WINDOW_MS = 30 * 86_400_000
POLL_S = 0.05
#: A worker is one Python process (one event loop): it uses at most one core. Plan it at 70% of
#: one, so that a rebalance, a backlog after an outage or a hot partition has room.
WORKER_CORE_BUDGET = 0.7
#: A Redis primary runs commands on one thread. Plan it at 50% of a core: replication, AOF
#: rewrites and a failed-over neighbour's load need the rest.
REDIS_CORE_BUDGET = 0.5
#: Hash-tag groups per primary (docs/readme/cluster.md): 16 spreads the load within ~10%.
GROUPS_PER_PRIMARY = 16


@dataclass(frozen=True, slots=True)
class Run:
    """One replay of the workload by `workers` processes."""

    rules: str
    workers: int
    events: int
    seconds: float
    worker_cpu_s: float
    redis_cpu_s: float
    redis_cpu_by_primary_s: tuple[float, ...]
    broker_cpu_s: float
    other_cpu_s: float

    @property
    def events_per_s(self) -> float:
        """Throughput over the window."""
        return self.events / self.seconds

    @property
    def worker_us(self) -> float:
        """Worker CPU per event, all workers together, in microseconds."""
        return self.worker_cpu_s / self.events * 1e6

    @property
    def redis_us(self) -> float:
        """Redis CPU per event, all primaries together, in microseconds."""
        return self.redis_cpu_s / self.events * 1e6

    @property
    def redis_skew(self) -> float:
        """Busiest primary's CPU over the mean primary's: what the key groups leave uneven."""
        mean = self.redis_cpu_s / len(self.redis_cpu_by_primary_s)
        return max(self.redis_cpu_by_primary_s) / mean if mean else 1.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What one event rate needs."""

    rate: int
    worker_cores: float
    workers: int
    redis_cores: float
    primaries: int
    partitions: int
    key_groups: int


def plan(
    rate: int,
    worker_us: float,
    redis_us: float,
    redis_skew: float = 1.0,
    worker_budget: float = WORKER_CORE_BUDGET,
    redis_budget: float = REDIS_CORE_BUDGET,
) -> Plan:
    """CPU per event x rate / core budget: worker processes and Redis primaries for `rate`.

    Partitions cap the workers (one worker per partition of every input topic), so there are at
    least twice as many as workers, to grow without repartitioning, rounded up to a multiple
    of 12 (evenly split by 1, 2, 3, 4 and 6 workers).
    """
    worker_cores = rate * worker_us / 1e6
    redis_cores = rate * redis_us / 1e6
    workers = max(1, math.ceil(worker_cores / worker_budget))
    primaries = max(1, math.ceil(redis_cores * redis_skew / redis_budget))
    partitions = 12 * math.ceil(2 * workers / 12)
    return Plan(
        rate, worker_cores, workers, redis_cores, primaries, partitions,
        GROUPS_PER_PRIMARY * primaries,
    )  # fmt: skip


def say(message: str) -> None:
    """Progress on stderr."""
    print(f"[capacity] {message}", file=sys.stderr, flush=True)


class Session:
    """The broker, the cluster, the topics and the worker processes of one measurement."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.suffix = uuid.uuid4().hex[:8]
        self.log_dir = Path(tempfile.mkdtemp(prefix="streamscore-capacity-"))
        self.broker: dev.EmbeddedServer | None = None
        self.cluster: LocalCluster | None = None
        self.children: list[Child] = []

    def settings(self, run: str, rules: Path) -> Settings:
        """One run's settings: the session's topics, its own group and key prefix."""
        assert self.broker is not None and self.cluster is not None
        topics = {
            name: f"cap.{self.suffix}.{name.removeprefix('topic_')}"
            for name in Settings.model_fields
            if name.startswith("topic_") and Settings.model_fields[name].annotation is str
        }
        values: dict[str, Any] = dict(
            kafka_bootstrap=self.broker.bootstrap,
            redis_url=self.cluster.url,
            redis_cluster="true",
            redis_key_groups=self.args.key_groups,
            redis_key_prefix=f"cap:{self.suffix}:{run}",
            consumer_group=f"cap-{self.suffix}-{run}",
            topic_partitions=self.args.partitions,
            rules_file=rules,
            # The replay spans 30 days; the inactivity timer would only add noise.
            decay_tick_s=3600.0,
            web_port=dev.free_port(),
            log_level="WARNING",
        )
        values.update(topics)
        return load_settings(**values)

    def start(self) -> int:
        """Start the broker and the cluster, produce the workload; returns its event count."""
        args = self.args
        self.broker = dev.start_broker()
        self.cluster = LocalCluster.start(primaries=3)
        end_ms = time.time_ns() // 1_000_000 - 60_000
        workload = build_workload(
            args.events, args.leads, args.seed, end_ms, WINDOW_MS, args.partitions
        )
        base = self.settings("setup", EXAMPLE_RULES)
        asyncio.run(ensure_topics(base))
        _, produce_s = produce_all(base.kafka_bootstrap, list(base.input_topics), workload.messages)
        total = len(workload.messages)
        say(f"produced {total:,} events in {produce_s:.1f} s; logs in {self.log_dir}")
        return total

    def primary_pids(self) -> list[int]:
        """PIDs of the cluster's primaries (all three serve slots: no replicas here)."""
        assert self.cluster is not None
        return [s.pid for s in self.cluster.servers[: self.cluster.primary_count]]

    def replay(self, rules: Path, workers: int, total: int, index: int) -> Run:
        """Replay the workload with `workers` processes; CPU and time over the window."""
        assert self.cluster is not None and self.broker is not None
        for row in self.cluster.admin.primaries():
            # An emptied server per run: earlier runs' keys make the same work cost more.
            self.cluster.admin.at(row).flushall()
        settings = self.settings(f"r{index}", rules)
        group = [
            Child(f"r{index}-w{i}", "streamscore.cli", ["worker"],
                  settings.model_copy(update={"web_port": dev.free_port()}), self.log_dir)
            for i in range(workers)
        ]  # fmt: skip
        self.children.extend(group)
        try:
            return asyncio.run(self._measure(settings, rules, group, total))
        finally:
            for child in group:
                child.stop()

    async def _measure(
        self, settings: Settings, rules: Path, group: list[Child], total: int
    ) -> Run:
        client = await open_client(settings.redis_url.get_secret_value(), cluster=True)
        store = RedisStore(client, KeySpace(settings.redis_key_prefix, settings.redis_key_groups))
        assert self.broker is not None
        try:
            started = time.monotonic()
            applied = 0
            while applied == 0:
                if time.monotonic() - started > 180 or not all(c.alive() for c in group):
                    raise RuntimeError(f"no event applied:\n{group[0].log_tail()}")
                await asyncio.sleep(POLL_S)
                applied = _applied(await store.applied_offsets())
            first, opened = applied, time.monotonic()
            before = self._cpu(group)
            last_progress, last_applied = opened, applied
            while applied < total:
                await asyncio.sleep(POLL_S)
                applied = _applied(await store.applied_offsets())
                now = time.monotonic()
                if applied > last_applied:
                    last_progress, last_applied = now, applied
                elif now - last_progress > 60 or not all(c.alive() for c in group):
                    raise RuntimeError(
                        f"stalled at {applied:,} of {total:,}:\n{group[0].log_tail()}"
                    )
            seconds = time.monotonic() - opened
            after = self._cpu(group)
        finally:
            await store.close()
        delta = {k: after[k] - before[k] for k in before}
        primaries = tuple(delta[f"redis{i}"] for i in range(len(self.primary_pids())))
        ours = delta["workers"] + sum(primaries) + delta["broker"]
        return Run(
            rules=rules.name, workers=len(group), events=total - first, seconds=seconds,
            worker_cpu_s=delta["workers"], redis_cpu_s=sum(primaries),
            redis_cpu_by_primary_s=primaries, broker_cpu_s=delta["broker"],
            other_cpu_s=max(0.0, delta["busy"] - ours),
        )  # fmt: skip

    def _cpu(self, group: list[Child]) -> dict[str, float]:
        assert self.broker is not None
        out = {"workers": sum(_cpu_s(c.pid) for c in group), "busy": system_busy_s()}
        out["broker"] = _cpu_s(self.broker.pid)
        for i, pid in enumerate(self.primary_pids()):
            out[f"redis{i}"] = _cpu_s(pid)
        return out

    def close(self) -> None:
        """Stop every process this session started, by PID."""
        for child in self.children:
            child.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.broker is not None:
            self.broker.stop()


def _applied(offsets: dict[str, int]) -> int:
    # Every event is valid and unique, and each partition is applied in offset order.
    return sum(offset + 1 for offset in offsets.values())


def _cpu_s(pid: int) -> float:
    found = sample(pid)
    if found is None:
        raise RuntimeError(f"process {pid} is gone")
    return found.cpu_s


def report(runs: list[Run], rates: list[int], load: tuple[float, float, float]) -> str:
    """The markdown tables: measurements, then the plan for each rate."""
    lines = [
        f"load average before the runs (1, 5, 15 min): {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"
        f" on {os.cpu_count()} cores",
        "",
        "| rules | workers | events/s | worker CPU/event | Redis CPU/event (3 primaries) "
        "| busiest primary / mean | broker CPU/event | other processes' cores |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        lines.append(
            f"| {r.rules} | {r.workers} | {r.events_per_s:,.0f} | {r.worker_us:.1f} µs "
            f"| {r.redis_us:.1f} µs | {r.redis_skew:.2f} "
            f"| {r.broker_cpu_s / r.events * 1e6:.1f} µs "
            f"| {r.other_cpu_s / r.seconds:.2f} |"
        )
    for rules in dict.fromkeys(r.rules for r in runs):
        # CPU per event does not depend on the worker count (each event is scored once, by one
        # worker); the median over the runs takes the noise of a shared machine out.
        mine = [r for r in runs if r.rules == rules]
        worker_us = statistics.median(r.worker_us for r in mine)
        redis_us = statistics.median(r.redis_us for r in mine)
        skew = max(r.redis_skew for r in mine)
        # Other processes' load inflates CPU per event (shared caches, hyper-threads): the run
        # that shared the machine least is the closest to a machine of its own.
        calm = min(mine, key=lambda r: r.other_cpu_s / r.seconds)
        lines += [
            "",
            f"Plan for {rules} (medians over its {len(mine)} runs: worker {worker_us:.1f} µs, "
            f"Redis {redis_us:.1f} µs an event; in the run least shared with other processes, "
            f"{calm.worker_us:.1f} and {calm.redis_us:.1f}; busiest primary x{skew:.2f}; "
            f"workers at {WORKER_CORE_BUDGET:.0%} of a core, primaries at "
            f"{REDIS_CORE_BUDGET:.0%}):",
            "",
            "| events/s | worker cores | worker processes | Redis cores | primaries "
            "| input partitions | redis_key_groups |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for rate in rates:
            p = plan(rate, worker_us, redis_us, skew)
            lines.append(
                f"| {rate:,} | {p.worker_cores:.1f} | {p.workers} | {p.redis_cores:.1f} "
                f"| {p.primaries} | {p.partitions} | {p.key_groups} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--key-groups", type=int, default=48, help="16 per primary")
    parser.add_argument("--workers", default="1,2,3", help="worker counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each rules x workers")
    parser.add_argument(
        "--rules", type=Path, action="append",
        help="rules files (repeatable); default: examples/rules.yaml and "
        "benchmarks/simple_rules.yaml when present",
    )  # fmt: skip
    parser.add_argument("--rates", default="10000,100000,1000000")
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "capacity.json"
    )
    parser.add_argument(
        "--report-from", type=Path, metavar="FIGURES.json",
        help="print the report of an earlier run's figures (--out) and exit",
    )  # fmt: skip
    return parser.parse_args(argv)


def load_runs(path: Path) -> tuple[list[Run], tuple[float, float, float]]:
    """The runs and the load before them, from a figures file that main() wrote."""
    figures = json.loads(path.read_text(encoding="utf-8"))
    runs = []
    for row in figures["runs"]:
        fields = {k: v for k, v in row.items() if k in Run.__dataclass_fields__}
        fields["redis_cpu_by_primary_s"] = tuple(fields["redis_cpu_by_primary_s"])
        runs.append(Run(**fields))
    load = figures["load_before"]
    return runs, (load[0], load[1], load[2])


def main(argv: list[str] | None = None) -> int:
    """Measure, print the report, write the figures as JSON."""
    args = parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]
    if args.report_from is not None:
        earlier, load_then = load_runs(args.report_from)
        print(report(earlier, rates, load_then))
        return 0
    rules = args.rules or [p for p in (EXAMPLE_RULES, SIMPLE_RULES) if p.exists()]
    if not args.rules and not SIMPLE_RULES.exists():
        say(f"{SIMPLE_RULES} not found: measuring the example rules only")
    counts = [int(n) for n in args.workers.split(",")]
    load = os.getloadavg()
    say(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    session = Session(args)
    runs: list[Run] = []
    try:
        total = session.start()
        index = 0
        for path in rules:
            for workers in counts:
                for _ in range(args.repeat):
                    run = session.replay(path, workers, total, index)
                    index += 1
                    say(
                        f"{path.name}, {workers} worker(s): {run.events_per_s:,.0f} events/s, "
                        f"worker {run.worker_us:.1f} µs, Redis {run.redis_us:.1f} µs an event"
                    )
                    runs.append(run)
    finally:
        session.close()
    text = report(runs, rates, load)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {
        "machine": machine_info(),
        "code": code_version(REPO_ROOT),
        "load_before": load,
        "load_after": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": [{**asdict(r), "events_per_s": r.events_per_s} for r in runs],
    }
    args.out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    say(f"figures in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
