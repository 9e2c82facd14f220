"""Phase: handoff latency at fixed input rates, for each producer linger, on a caught-up worker.

Every run gets a fresh broker, topics and worker: Tansu keeps everything in memory and its CPU
per request grew run after run on one broker (benchmarks/README.md), which would measure the
broker's history rather than the worker. Each run warms up at its rate
first (every partition fetched, the worker's caches and the broker's batches in steady state),
then measures for --rate-seconds.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from typing import Any

from benchmarks.children import Child
from benchmarks.kafkaio import create_topics
from benchmarks.latency import LatencyProbe, RateResult, measure_rate
from benchmarks.measure import RunFailed
from benchmarks.phases.throughput import median_by
from benchmarks.procstat import sample, system_busy_s
from benchmarks.session import INPUT_TOPICS, OUTPUT_TOPICS, Session, say
from streamscore import dev

WARM_HOT_LEADS = 5


def run_latency(session: Session) -> None:
    """Every (linger, rate) pair, --latency-repeat runs each; the median p99 stands for it."""
    args = session.args
    results: list[dict[str, Any]] = []
    all_runs: list[dict[str, Any]] = []
    errors: list[str] = []
    for linger_ms in args.lingers:
        for i, rate in enumerate(args.rates):
            per_rate: list[RateResult] = []
            for rep in range(args.latency_repeat):
                say(
                    f"latency: linger {linger_ms} ms, {rate:,.0f} events/s: warm-up "
                    f"{args.warmup_seconds:.0f}s, then {args.rate_seconds:.0f}s (run {rep})"
                )
                result, run_errors = _run(session, linger_ms, rate, i, rep)
                errors.extend(run_errors)
                per_rate.append(result)
                all_runs.append(result.as_dict())
                say(
                    f"latency linger {linger_ms} ms, {rate:,.0f}/s: {result.handoffs} handoffs "
                    f"({result.never_arrived} never arrived, {result.wrong_trigger} wrong "
                    f"trigger, {result.wrong_trigger_identify} naming the identify), p50 "
                    f"{result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max "
                    f"{result.max_ms:.1f} ms; worker's handoff_visible p50 "
                    f"{result.visible_p50_ms:.1f} ms, p99 {result.visible_p99_ms:.1f} ms; cores "
                    + ", ".join(f"{k} {v:.2f}" for k, v in result.cpu_cores.items())
                )
            results.append(median_by(per_rate, lambda r: r.p99_ms).as_dict())
    session.results["latency"] = {
        "rates": results,
        "all_runs": all_runs,
        "producer_errors": errors[:5],
        "warmup_seconds": args.warmup_seconds,
    }


def _run(
    session: Session, linger_ms: int, rate: float, index: int, rep: int
) -> tuple[RateResult, list[str]]:
    args = session.args
    broker = dev.start_broker()
    tag = f"{session.suffix}-l{linger_ms}r{index}x{rep}"
    inputs = tuple(f"bench.{tag}.{name}" for _, name in INPUT_TOPICS)
    run = f"lat-l{linger_ms}r{index}x{rep}"
    settings = session.settings(
        inputs,
        run,
        kafka_bootstrap=broker.bootstrap,
        decay_tick_s=1.0,
        **args.worker_settings,
    )
    worker: Child | None = None
    probe: LatencyProbe | None = None
    try:
        outputs = [getattr(settings, field) for field, _ in OUTPUT_TOPICS]
        create_topics(broker.bootstrap, [*inputs, *outputs], args.partitions)
        worker = session.start_child(f"latency-{run}", "streamscore.cli", ["worker"], settings)
        metrics_url = f"http://127.0.0.1:{settings.web_port}/metrics"
        _wait_ready(worker, f"http://127.0.0.1:{settings.web_port}/readyz")
        probe = LatencyProbe(
            settings.kafka_bootstrap, settings.input_topics, settings.topic_handoffs, linger_ms
        )
        probe.assign(args.partitions)
        measure_rate(
            probe,
            metrics_url,
            linger_ms,
            rate,
            args.warmup_seconds,
            WARM_HOT_LEADS,
            args.seed,
            f"w{tag}",
            args.partitions,
        )
        redis_pid, worker_pid = session.server_pids[0], worker.pid

        def cpu() -> dict[str, float]:
            out = {"all": system_busy_s()}
            for key, pid in (
                ("worker", worker_pid),
                ("redis", redis_pid),
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
            linger_ms,
            rate,
            args.rate_seconds,
            args.hot_per_rate,
            args.seed + 1 + index + 100 * rep,
            tag,
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


def _wait_ready(child: Child, url: str, timeout_s: float = 90.0) -> None:
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
