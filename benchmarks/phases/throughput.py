"""Phase: throughput runs over a job's pre-produced topics, medians of --repeat, each checked.

Simple job: (a) the streamscore worker, (b) a per-event Faust agent, (c) the minimal loop,
(q) Quix Streams, (r) `streamscore replay` of the same topics into a replay namespace and (s) the
worker with one shadow model (the same rules under another version) beside the live one; every
completed run is checked against the reference (same per-lead scores, same set of handoffs),
(s) in both its namespaces. Full job: (a) on the example rules (and, on request, (b)); completed
runs are compared with each other.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypeVar

import redis

from benchmarks.kafkaio import create_topics, read_topic, topic_records
from benchmarks.latency import scrape_worker_metrics
from benchmarks.measure import (
    RunResult,
    applied_count,
    file_progress,
    measure,
    offsets_hash_progress,
    redis_offsets_progress,
)
from benchmarks.memory import sample_workload
from benchmarks.session import RULES_FILE, SIMPLE_RULES_FILE, JobData, Session, say
from benchmarks.simple_reference import Expected
from benchmarks.simple_reference import LeadScore as SimpleScore
from benchmarks.simplecheck import (
    Check,
    RunOutcome,
    check,
    minimal_loop_scores,
    parse_handoffs,
    quix_scores,
    worker_scores,
)
from benchmarks.statecheck import LeadScore, compare, read_scores
from streamscore.config import Settings
from streamscore.runtime.lanes import shadow_topics
from streamscore.runtime.replay import replay_topics
from streamscore.scoring.rules import CompiledRules, load_rules
from streamscore.store.keys import KeySpace
from streamscore.store.namespaces import replay_namespace, shadow_namespace

Kind = Literal["worker", "faust", "minimal", "quix", "replay", "shadow"]
#: The runs that are streamscore (its rules file, its state check).
STREAMSCORE_KINDS = ("worker", "faust", "replay", "shadow")
R = TypeVar("R")

#: Settings that make (a)'s merge exact on a replay (the aligner waits for every partition),
#: so its handoffs can be checked against the reference.
EXACT_REPLAY = {"align_max_wait_ms": 60_000}
#: How long a run's handoff topic must stay unchanged after its last event before it is read.
OUTPUTS_QUIET_S = 1.5
OUTPUTS_WAIT_MAX_S = 20.0


def quix_version() -> str:
    """The installed quixstreams version."""
    try:
        return metadata.version("quixstreams")
    except metadata.PackageNotFoundError:
        return "(not installed)"


@dataclass(frozen=True)
class RunSpec:
    """One row of the throughput table."""

    name: str
    label: str
    kind: Kind
    note: str = ""


SIMPLE_RUNS = {
    "a": RunSpec("a", "streamscore worker", "worker"),
    "b": RunSpec("b", "per-event Faust agent", "faust"),
    "c": RunSpec("c", "minimal aiokafka loop, one Lua call per batch", "minimal"),
    "q": RunSpec("q", f"Quix Streams {quix_version()}", "quix"),
    "r": RunSpec("r", "streamscore replay into a replay namespace", "replay"),
    "s": RunSpec("s", "streamscore worker, one shadow model beside live", "shadow"),
}
FULL_RUNS = {
    "a": RunSpec("a", "streamscore worker", "worker"),
    "b": RunSpec("b", "per-event Faust agent", "faust"),
}


def median_by(runs: list[R], key: Callable[[R], float]) -> R:
    """The run with the median `key` (the lower middle one of an even count)."""
    return sorted(runs, key=key)[(len(runs) - 1) // 2]


def cpu_us_per_event(run: RunResult) -> dict[str, float]:
    """CPU microseconds per event inside the window: process, Redis, broker and their sum."""
    if not run.events:
        return {}
    split = {
        "process": run.cpu_s / run.events * 1e6,
        "redis": run.valkey_cpu_s / run.events * 1e6,
        "broker": run.broker_cpu_s / run.events * 1e6,
    }
    split["total"] = sum(split.values())
    return split


def streamscore_simple_rules(session: Session) -> tuple[Path | None, bool, str]:
    """The rules file (a) and (b) run the simple job with, whether penalties decay, and a note.

    Asks `streamscore rules check`, so it follows whatever the installed streamscore accepts.
    Without `decay.penalties` support: None (skip), or with --undecayed-penalties a copy of the
    file without that key, checked against the reference with undecayed penalties.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "streamscore.cli", "rules", "check", str(SIMPLE_RULES_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode == 0:
        return SIMPLE_RULES_FILE, True, ""
    output = (proc.stdout + proc.stderr).strip()
    if "penalties" not in output:
        raise RuntimeError(f"streamscore rejects {SIMPLE_RULES_FILE}:\n{output}")
    if not session.args.undecayed_penalties:
        return (
            None,
            True,
            "skipped on the simple job: this streamscore has no `decay.penalties` rules option "
            "yet (`streamscore rules check` rejects benchmarks/simple_rules.yaml); "
            "--undecayed-penalties runs them without it",
        )
    stand_in = session.log_dir / "simple_rules_undecayed.yaml"
    text = SIMPLE_RULES_FILE.read_text()
    stand_in.write_text(text.replace("  penalties: true\n", ""))
    return (
        stand_in,
        False,
        "penalties undecayed: this streamscore lacks `decay.penalties`, so it ran the simple "
        "rules without it and is checked against the reference with undecayed penalties",
    )


class ThroughputPhase:
    """The runs of one job."""

    def __init__(self, session: Session, data: JobData) -> None:
        self.session = session
        self.data = data
        self.args = session.args
        self.bootstrap = session.stack.kafka_bootstrap
        self.client: redis.Redis = session.redis_client()

    def run(self, wanted: list[str]) -> None:
        """Every wanted run, --repeat times; medians, checks and ratios into the results."""
        job = self.data.job
        specs = SIMPLE_RUNS if job == "simple" else FULL_RUNS
        skipped: dict[str, str] = {}
        streamscore_rules: Path | None = RULES_FILE
        decay_penalties = True
        streamscore_note = ""
        if job == "simple" and {"a", "b", "r", "s"} & set(wanted):
            streamscore_rules, decay_penalties, streamscore_note = streamscore_simple_rules(
                self.session
            )
            if streamscore_rules is None:
                for name in ("a", "b", "r", "s"):
                    if name in wanted:
                        skipped[name] = streamscore_note
                        say(f"({name}) {streamscore_note}")
        measured: dict[str, list[RunResult]] = {}
        checks: dict[str, list[dict[str, Any]]] = {}
        scores: dict[str, dict[str, LeadScore]] = {}
        try:
            for name in wanted:
                spec = specs[name]
                if name in skipped:
                    continue
                uses_streamscore = spec.kind in STREAMSCORE_KINDS
                note = streamscore_note if uses_streamscore and job == "simple" else spec.note
                expected = self.data.expected
                if uses_streamscore and not decay_penalties:
                    expected = self.data.expected_undecayed
                for rep in range(self.args.repeat):
                    result, found = self._run_once(
                        spec, rep, streamscore_rules, note, expected, scores
                    )
                    measured.setdefault(name, []).append(result)
                    for key, c in found.items():
                        checks.setdefault(key, []).append(c.as_dict())
        finally:
            self.client.close()
        runs = {name: median_by(rs, lambda r: r.events_per_s) for name, rs in measured.items()}
        out: dict[str, Any] = {
            "runs": {k: {**v.as_dict(), "cpu_us": cpu_us_per_event(v)} for k, v in runs.items()},
            "all_runs": {k: [r.as_dict() for r in rs] for k, rs in measured.items()},
            "skipped": skipped,
            "checks": checks,
        }
        if job == "simple":
            out["ratios"] = simple_ratios(runs)
            out["streamscore_rules"] = str(streamscore_rules) if streamscore_rules else None
        else:
            out["state_check"] = self._compare(runs, scores)
        self.session.results.setdefault("throughput", {})[job] = out

    def _run_once(
        self,
        spec: RunSpec,
        rep: int,
        rules: Path | None,
        note: str,
        expected: Expected | None,
        scores: dict[str, dict[str, LeadScore]],
    ) -> tuple[RunResult, dict[str, Check]]:
        """One measured run; its reference checks by name ((s): also `s:shadow`)."""
        session, data, args = self.session, self.data, self.args
        run = f"{data.job}-{spec.name}" + (f".r{rep}" if rep else "")
        outputs = session.output_topics(run)
        # The namespaces and topics other than the run's own: (r) writes into a replay
        # namespace and its topics, (s) into the live one and a shadow model's.
        replay_name = f"bench-{session.suffix}-{spec.name}{rep}"
        shadow_model = f"s{session.suffix}_{rep}"
        if spec.kind == "replay":
            outputs = replay_topics(replay_name)
        extra_topics: list[str] = []
        create_topics(self.bootstrap, list(outputs.values()), args.partitions)
        # Every run starts on an empty server: with the earlier runs' keys left in place, Redis
        # CPU for the same work grew run after run (benchmarks/README.md).
        self.client.flushdb()
        prefix = f"bench:{session.suffix}:{run}"
        say(
            f"({spec.name}) {data.job}: {spec.label}: starting"
            + (f" (repeat {rep})" if rep else "")
        )
        settings: Settings | None = None
        keyspace: KeySpace | None = None
        shadow_keys: KeySpace | None = None
        state_dir = session.log_dir / f"{run}-state"
        scrape = None
        if spec.kind in STREAMSCORE_KINDS:
            overrides: dict[str, Any] = {"rules_file": rules or RULES_FILE}
            if spec.kind != "faust":
                if data.job == "simple":
                    overrides.update(EXACT_REPLAY)
                overrides.update(args.worker_settings)
            if spec.kind == "shadow":
                overrides["shadow_rules_file"] = shadow_rules(session.log_dir, rules or RULES_FILE)
                overrides["shadow_model"] = shadow_model
            settings = session.settings(data.inputs, run, **overrides)
            groups = settings.redis_key_groups
            keyspace = KeySpace(settings.redis_key_prefix, groups)
            if spec.kind == "replay":
                # The run's state is the replay namespace's; its own prefix stays empty.
                keyspace = KeySpace(
                    replay_namespace(settings.redis_key_prefix, replay_name).prefix, groups
                )
            progress = redis_offsets_progress(self.client, keyspace)
            if spec.kind == "shadow":
                shadow_keys = KeySpace(
                    shadow_namespace(settings.redis_key_prefix, shadow_model).prefix, groups
                )
                # Applied in both namespaces (the shadow lane commits after the live one).
                progress = partial(_both_applied, self.client, keyspace, shadow_keys)
                # The shadow's own topics (handoffs first), which the worker does not create.
                extra_topics = list(shadow_topics(settings))
                create_topics(self.bootstrap, extra_topics, args.partitions)
            module, child_args = {
                "worker": ("streamscore.cli", ["worker"]),
                "shadow": ("streamscore.cli", ["worker"]),
                "faust": ("benchmarks.faust_baseline", []),
                "replay": ("benchmarks.replay_child", ["--name", replay_name]),
            }[spec.kind]
            if spec.kind in ("worker", "shadow"):
                scrape = partial(
                    scrape_worker_metrics, f"http://127.0.0.1:{settings.web_port}/metrics"
                )
        elif spec.kind == "minimal":
            module = "benchmarks.minimal_loop"
            child_args = [
                *("--bootstrap", self.bootstrap, "--redis-url", session.stack.redis_url),
                *("--topics", ",".join(data.scored_topics), "--partitions", str(args.partitions)),
                *("--handoffs", outputs["topic_handoffs"], "--prefix", prefix),
                *("--batch", str(args.batch)),
            ]
            progress = offsets_hash_progress(self.client, f"{prefix}:offsets")
        else:
            module = "benchmarks.quix_app"
            progress_path = session.log_dir / f"{run}.progress"
            group = f"bench-{session.suffix}-{run}"
            child_args = [
                *("--bootstrap", self.bootstrap, "--topics", ",".join(data.scored_topics)),
                *("--handoffs", outputs["topic_handoffs"], "--group", group),
                *("--state-dir", str(state_dir), "--progress", str(progress_path)),
            ]
            progress = file_progress(progress_path)
        window = self.args.baseline_window if spec.kind == "faust" else None
        child = session.start_child(f"run-{run}", module, child_args, settings)
        try:
            result = measure(
                spec.name,
                spec.label,
                child,
                self.client,
                progress,
                data.total,
                *session.server_pids,
                max_window_s=window,
                note=note if window is None else f"{note}; first {window:.0f}s".lstrip("; "),
                scrape=scrape,
            )
            if result.completed:
                self._wait_outputs(outputs["topic_handoffs"])
                if shadow_keys is not None:
                    self._wait_outputs(extra_topics[0])
        finally:
            exit_code = child.stop()
        result.exit_code = exit_code
        result.prefix = prefix
        say(
            f"({spec.name}) {result.events:,} events in {result.seconds:.1f}s = "
            f"{result.events_per_s:,.0f}/s, CPU {result.cpu_s:.1f}s, peak RSS "
            f"{result.peak_rss_mb:.0f} MB, others' CPU {result.others_cpu_s:.1f}s, exit {exit_code}"
        )
        if result.child_metrics:
            say(f"({spec.name}) worker metrics: {result.child_metrics}")
        if data.job == "full":
            if result.completed and keyspace is not None:
                scores[run] = read_scores(self.client, keyspace, _rules_of(settings))
            if spec.name == "a" and session.workload_memory is None and keyspace is not None:
                session.workload_memory = sample_workload(self.client, keyspace)
            return result, {}
        if not result.completed or expected is None:
            return result, {}
        if spec.kind == "minimal":
            lead_scores = minimal_loop_scores(self.client, prefix)
        elif spec.kind == "quix":
            lead_scores = quix_scores(state_dir)
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            assert keyspace is not None
            lead_scores = worker_scores(self.client, keyspace, _rules_of(settings))
        handoffs_topic = outputs["topic_handoffs"]
        found = {spec.name: self._check(spec.name, expected, lead_scores, handoffs_topic)}
        if shadow_keys is not None:
            assert settings is not None and settings.shadow_rules_file is not None
            shadow_scores = worker_scores(
                self.client, shadow_keys, load_rules(settings.shadow_rules_file)
            )
            name = f"{spec.name}:shadow"
            found[name] = self._check(name, expected, shadow_scores, extra_topics[0])
        return result, found

    def _check(
        self,
        name: str,
        expected: Expected,
        lead_scores: dict[str, SimpleScore],
        handoffs_topic: str,
    ) -> Check:
        """One namespace's lead scores and one handoff topic against the reference."""
        handoffs, records = parse_handoffs(
            read_topic(self.bootstrap, handoffs_topic, self.args.partitions)
        )
        found = check(name, expected, RunOutcome(lead_scores, handoffs, records))
        say(
            f"({name}) reference check {'OK' if found.ok else 'MISMATCH'}: "
            f"{found.leads_got:,}/{found.leads_expected:,} leads, {found.score_mismatches} score "
            f"and {found.time_mismatches} time mismatches (max rel diff "
            f"{found.max_rel_diff:.1e}); handoffs {found.handoffs_got:,}/"
            f"{found.handoffs_expected:,}, {found.missing_handoffs} missing, "
            f"{found.extra_handoffs} extra, {found.duplicate_handoffs} duplicate records"
        )
        return found

    def _wait_outputs(self, topic: str) -> None:
        """Let a run's last handoffs reach their topic (outside the measured window)."""
        deadline = time.monotonic() + OUTPUTS_WAIT_MAX_S
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = topic_records(self.bootstrap, topic, self.args.partitions)
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since >= OUTPUTS_QUIET_S:
                return
            time.sleep(0.3)

    def _compare(
        self, runs: dict[str, RunResult], scores: dict[str, dict[str, LeadScore]]
    ) -> dict[str, Any]:
        """Full job: per-lead scores of every completed run (repeats included) must agree."""
        names = sorted(scores)
        compared = []
        for i, left in enumerate(names):
            for right in names[i + 1 :]:
                c = compare(left, scores[left], right, scores[right])
                compared.append(c.as_dict())
                say(
                    f"state {left} vs {right}: leads {c.leads_left}/{c.leads_right}, missing "
                    f"{c.missing}, score mismatches {c.score_mismatches}, lt mismatches "
                    f"{c.lt_mismatches}, tier differences {c.tier_differences} (information)"
                )
        not_compared = sorted(n for n, r in runs.items() if not r.completed)
        return {
            "compared": compared,
            "not_compared": not_compared,
            "reason_not_compared": "run stopped after a bounded window" if not_compared else "",
        }


def simple_ratios(runs: dict[str, RunResult]) -> dict[str, float | None]:
    """The issue's ratios: a/q, a/c (throughput), a's CPU per event over c's, and a/b."""
    rate = {k: v.events_per_s for k, v in runs.items()}
    cpu = {k: cpu_us_per_event(v).get("total") for k, v in runs.items()}

    def ratio(x: float | None, y: float | None) -> float | None:
        return x / y if x and y else None

    def minus(x: float | None, y: float | None) -> float | None:
        return x - y if x is not None and y is not None else None

    split = {k: cpu_us_per_event(v) for k, v in runs.items()}
    return {
        "a_over_q": ratio(rate.get("a"), rate.get("q")),
        "a_over_c": ratio(rate.get("a"), rate.get("c")),
        "a_over_b": ratio(rate.get("a"), rate.get("b")),
        "cpu_a_over_c": ratio(cpu.get("a"), cpu.get("c")),
        "r_over_a": ratio(rate.get("r"), rate.get("a")),
        "s_over_a": ratio(rate.get("s"), rate.get("a")),
        # The shadow model's cost: (s)'s CPU per event over (a)'s, in all and in the worker.
        "shadow_cpu_us": minus(cpu.get("s"), cpu.get("a")),
        "shadow_process_cpu_us": minus(
            split.get("s", {}).get("process"), split.get("a", {}).get("process")
        ),
    }


def shadow_rules(directory: Path, rules: Path) -> Path:
    """(s)'s shadow rules, written to `directory`: the live rules under another version string
    (so the same scores)."""
    path = directory / f"shadow-{rules.name}"
    if not path.exists():
        live = load_rules(rules).version
        text = rules.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        for i, line in enumerate(lines):
            if line.startswith("version:"):
                lines[i] = f'version: "{live}-shadow"\n'
                break
        else:
            raise RuntimeError(f"{rules}: no top-level `version:` line to rename")
        path.write_text("".join(lines), encoding="utf-8")
    return path


def _both_applied(client: redis.Redis, live: KeySpace, shadow: KeySpace) -> int:
    return min(applied_count(client, live), applied_count(client, shadow))


def _rules_of(settings: Settings | None) -> CompiledRules:
    assert settings is not None
    return load_rules(settings.rules_file)
