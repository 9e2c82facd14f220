"""The benchmark's markdown report, rendered from its results (a live run's or a saved JSON)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson

#: The issue's targets on the simple job: (ratio key, label, comparison, bound).
TARGETS = (
    ("a_over_q", "a/q (streamscore over Quix Streams)", ">=", 2.0),
    ("a_over_c", "a/c (streamscore over the minimal loop)", ">=", 0.5),
    ("cpu_a_over_c", "CPU per event, a over c", "<=", 2.0),
)
SIMPLE_ORDER = ("a", "b", "c", "q", "r", "s")
FULL_ORDER = ("a", "b")
#: The full job's (a) on the Lua engine, 1M events, median of 3 (full-run-ff36c75.md, a loaded
#: machine): what issue 16's "at least 1.5x today's (a)" refers to.
OLD_FULL_A_EVENTS_PER_S = 10_383


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def check_summary(checks: list[dict[str, Any]] | None) -> str:
    """'OK' when every repeat matched the reference, else how many did not."""
    if not checks:
        return "not checked"
    bad = [c for c in checks if not c["ok"]]
    if not bad:
        return "OK" if len(checks) == 1 else f"OK ({len(checks)}/{len(checks)})"
    return f"MISMATCH ({len(bad)}/{len(checks)})"


def throughput_table(runs: Sequence[dict[str, Any]], checks: dict[str, Any] | None) -> str:
    """One row per run: rate, the CPU split per event, peak RSS, and the check."""
    rows = []
    for r in runs:
        cpu = r.get("cpu_us") or {}
        window = "complete" if r["completed"] else "bounded window"
        rows.append(
            (
                f"({r['name']}) {r['label']}",
                round(r["events_per_s"]),
                r["events"],
                r["seconds"],
                cpu.get("process"),
                cpu.get("redis"),
                cpu.get("broker"),
                cpu.get("total"),
                r["peak_rss_mb"],
                r.get("others_cpu_s"),
                # (s) is checked in both its namespaces, live and shadow.
                check_summary(checks.get(r["name"], []) + checks.get(f"{r['name']}:shadow", []))
                if r["completed"] and checks is not None
                else "-",
                window + (f"; {r['note']}" if r.get("note") else ""),
            )
        )
    return table(
        [
            "run",
            "events/s",
            "events",
            "seconds",
            "CPU us/event: process",
            "Redis",
            "broker",
            "total",
            "peak RSS MB",
            "other procs CPU s",
            "check",
            "window",
        ],
        rows,
    )


def latency_table(rates: Sequence[dict[str, Any]]) -> str:
    """One row per (linger, input rate)."""
    rows = [
        (
            r["linger_ms"],
            round(r["target_rate"]),
            round(r["achieved_rate"]),
            r["seconds"],
            f"{r['handoffs']}/{r['hot_leads']}",
            r["never_arrived"],
            f"{r['wrong_trigger']} ({r.get('wrong_trigger_identify', '-')})",
            r["p50_ms"],
            r["p99_ms"],
            r["max_ms"],
            " / ".join(_fmt(x) for x in r["p50_by_slice_ms"]),
            r["visible_p50_ms"],
            r["visible_p99_ms"],
            r.get("consumer_visible_p50_ms"),
            r.get("consumer_visible_p99_ms"),
            r["p99_from_create_ms"],
            r["scored_p99_ms"],
            r["cpu_cores"].get("worker"),
            r["cpu_cores"].get("redis"),
            r["cpu_cores"].get("broker"),
            r["cpu_cores"].get("bench"),
            r["cpu_cores"].get("others"),
        )
        for r in rates
    ]
    return table(
        [
            "linger ms",
            "target ev/s",
            "sent ev/s",
            "seconds",
            "handoffs/hot leads",
            "never arrived",
            "wrong trigger (identify)",
            "append->handoff p50 ms",
            "p99 ms",
            "max ms",
            "p50 per 20 s",
            "worker's handoff_visible p50 ms",
            "p99 ms",
            "consumer's scored->read p50 ms",
            "p99 ms",
            "create->handoff p99 ms",
            "event->scored p99 ms",
            "worker cores",
            "Redis cores",
            "broker cores",
            "bench cores",
            "other procs cores",
        ],
        rows,
    )


def render(r: dict[str, Any]) -> str:
    """The whole report."""
    args = r.get("args", {})
    parts = ["# streamscore benchmark", ""]
    if args.get("quick"):
        parts += [
            "**Quick run** (`--quick`): 100,000 events; figures are indicative only.",
            "",
        ]
    parts += _workloads(r, args)
    tp = r.get("throughput", {})
    if "simple" in tp:
        parts += _simple(tp["simple"], args)
    if "full" in tp:
        parts += _full(tp["full"])
    if r.get("latency"):
        parts += _latency(r["latency"])
    if r.get("memory"):
        parts += _memory(r["memory"])
    if r.get("stages"):
        parts += _stages(r["stages"])
    if r.get("profile"):
        parts += _profile(r["profile"])
    if r.get("pyspy"):
        parts += _pyspy(r["pyspy"])
    if r.get("error"):
        parts += [f"**FAILED:** {r['error']}", ""]
    parts += _footer(r)
    return "\n".join(parts)


def _workloads(r: dict[str, Any], args: dict[str, Any]) -> list[str]:
    parts = []
    for job, w in r.get("workloads", {}).items():
        shape = (
            f"{w['profiled_leads']:,} with identify profiles; {w['segment_shaped']:,} "
            "Segment-shaped"
            if job == "full"
            else "native JSON only, four event types"
        )
        parts.append(
            f"**{job} job:** {w['events']:,} events over {w['leads']:,} leads ({shape}; mean "
            f"{w['mean_bytes']:.0f} B; event times over the last "
            f"{w['event_time_window_days']:.0f} days; record timestamps: "
            f"{w.get('record_timestamps', 'producer clock')}), {args.get('partitions')} "
            f"partitions per input topic. Mix: "
            + ", ".join(f"{k} {v:,}" for k, v in w["by_type"].items())
            + f". In event-time order, {args.get('batch', 0):,} consecutive events hold "
            f"{w['leads_per_batch']:,.0f} distinct leads on average."
        )
        if "reference_handoffs" in w:
            parts.append(
                f"Reference: {w['reference_handoffs']:,} handoffs (computed in "
                f"{w['reference_s']:.1f}s)."
            )
        parts.append("")
    return parts


def _simple(s: dict[str, Any], args: dict[str, Any]) -> list[str]:
    runs = s["runs"]
    parts = [
        "## Simple job: throughput (replay from the start of pre-produced topics)",
        "",
        throughput_table([runs[k] for k in SIMPLE_ORDER if k in runs], s.get("checks", {})),
        "",
    ]
    ratios = s.get("ratios", {})
    verdicts = []
    for key, label, op, bound in TARGETS:
        value = ratios.get(key)
        if value is None:
            verdicts.append(f"{label} = - (target {op} {bound:g})")
            continue
        met = value >= bound if op == ">=" else value <= bound
        verdicts.append(
            f"{label} = {_ratio(value)} (target {op} {bound:g}: {'met' if met else 'MISSED'})"
        )
    parts.append("; ".join(verdicts) + f"; a/b = {_ratio(ratios.get('a_over_b'))}.")
    if "r" in runs:
        parts.append(
            f"(r) replay: r/a = {_ratio(ratios.get('r_over_a'))} of the worker's throughput "
            "(the same worker, pointed at a replay namespace, its own group and topics)."
        )
    if "s" in runs:
        parts.append(
            f"(s) one shadow model: s/a = {_ratio(ratios.get('s_over_a'))} of (a)'s throughput; "
            f"+{_fmt(ratios.get('shadow_cpu_us'))} us of CPU per event in all, "
            f"+{_fmt(ratios.get('shadow_process_cpu_us'))} in the worker (s minus a, same run); "
            "its check covers the live and the shadow namespace."
        )
    for name, why in s.get("skipped", {}).items():
        parts.append(f"({name}) {why}.")
    repeat = args.get("repeat", 1)
    parts.append(
        f"Each row is the median of {repeat} run(s) by events/s (all in the JSON). Window: from "
        "the first progress seen (applied offsets in Redis; (q): messages processed, counted by "
        "an on_message_processed callback) to the last event, so startup and group joins are "
        "left out. CPU is read from /proc for the run's process, Redis and the broker inside "
        "the window; peak RSS is the process's VmHWM."
    )
    load = others_cores(s.get("all_runs", {}))
    if load is not None:
        parts.append(
            f"Other processes on the machine used {load:.2f} of its cores on average inside "
            "these windows" + (": the rates are depressed by them." if load > 0.2 else ".")
        )
    parts.append("")
    checks = [
        {**c, "run": f"{c['run']} (run {i + 1})" if len(cs) > 1 else c["run"]}
        for cs in s.get("checks", {}).values()
        for i, c in enumerate(cs)
    ]
    if checks:
        parts += [
            "Reference check (per-lead score within 1e-6 relative at the lead's last event, "
            "and the set of (lead, triggering event) handoffs):",
            "",
        ]
        rows = [
            (
                c["run"],
                f"{c['leads_got']:,}/{c['leads_expected']:,}",
                c["score_mismatches"],
                c["time_mismatches"],
                f"{c['max_rel_diff']:.1e}",
                f"{c['handoffs_got']:,}/{c['handoffs_expected']:,}",
                c["missing_handoffs"],
                c["extra_handoffs"],
                c["duplicate_handoffs"],
                "OK" if c["ok"] else "MISMATCH",
            )
            for c in checks
        ]
        parts.append(
            table(
                [
                    "run",
                    "leads",
                    "score mismatches",
                    "time mismatches",
                    "max rel diff",
                    "handoffs",
                    "missing",
                    "extra",
                    "duplicate records",
                    "result",
                ],
                rows,
            )
        )
        for c in checks:
            for ex in c["examples"][:3]:
                parts.append(f"- ({c['run']}) {orjson.dumps(ex).decode()}")
        parts.append("")
    return parts


def others_cores(all_runs: dict[str, list[dict[str, Any]]]) -> float | None:
    """CPU seconds per second used by processes outside the benchmark, over all windows."""
    runs = [r for rs in all_runs.values() for r in rs if r.get("seconds")]
    seconds = float(sum(r["seconds"] for r in runs))
    if not seconds:
        return None
    return float(sum(r.get("others_cpu_s") or 0.0 for r in runs)) / seconds


def _full(f: dict[str, Any]) -> list[str]:
    runs = f["runs"]
    parts = [
        "## Full example rules (examples/rules.yaml, full workload)",
        "",
        throughput_table([runs[k] for k in FULL_ORDER if k in runs], None),
        "",
    ]
    full_a = runs.get("a", {}).get("events_per_s")
    if full_a:
        ratio = full_a / OLD_FULL_A_EVENTS_PER_S
        parts += [
            f"(a) over the Lua engine's (a) on this job, {OLD_FULL_A_EVENTS_PER_S:,}/s "
            f"(benchmarks/results/full-run-ff36c75.md; that engine is gone, so not in this run) "
            f"= {ratio:.2f} (target >= 1.5: {'met' if ratio >= 1.5 else 'MISSED'}).",
            "",
        ]
    worker_metrics = runs.get("a", {}).get("child_metrics") or {}
    if worker_metrics.get("apply_calls"):
        parts.append(
            f"(a) applied {worker_metrics['batch_events_sum']:,.0f} events in "
            f"{worker_metrics['apply_calls']:,.0f} batches: "
            f"{worker_metrics['events_per_apply']:,.0f} events and "
            f"{worker_metrics['ms_per_apply']:.1f} ms of commit calls a batch (worker metrics)."
        )
    sc = f.get("state_check", {})
    for c in sc.get("compared", []):
        parts.append(
            f"State {c['left']} vs {c['right']}: {'OK' if c['ok'] else 'MISMATCH'} "
            f"({c['leads_left']:,} leads, {c['score_mismatches']} score and "
            f"{c['lt_mismatches']} lt mismatches, {c['tier_differences']} tier differences)."
        )
    if sc.get("not_compared"):
        parts.append(
            f"Not compared: {', '.join(sc['not_compared'])} ({sc['reason_not_compared']})."
        )
    parts.append("")
    return parts


def _latency(lat: dict[str, Any]) -> list[str]:
    return [
        "## Latency (paced input on a fresh broker; after a warm-up of "
        f"{lat.get('warmup_seconds', 0):.0f}s at the same rate)",
        "",
        latency_table(lat["rates"]),
        "",
        "append->handoff: from the broker's ack of the triggering event to the handoff read by "
        "a consumer; p50 per 20 s shows drift within the run. never arrived: designed hot leads "
        "whose handoff was not read by the end (the wait after the input stops is bounded); "
        "wrong trigger: a handoff naming another event than the /pricing view that made the "
        "lead cross (in brackets: how many named the lead's identify instead). The worker's "
        "streamscore_handoff_visible_seconds (scored_at to the broker's ack) is read from /metrics "
        "over the same window, beside the same span as the probe's consumer sees it (scored_at "
        "in the handoff to reading it): they should agree within a fetch. create->handoff "
        "includes the producer's linger; "
        "event->scored is the worker's own histogram.",
        "",
    ]


def _memory(mem: dict[str, Any]) -> list[str]:
    parts = [
        "## Redis memory per lead",
        "",
        f"- {mem['leads']:,} leads x {mem['events_per_lead']} events (identify, page view, "
        f"email open), example rules: INFO used_memory delta {mem['used_memory_delta_bytes']:,} "
        f"B = **{mem['bytes_per_lead_info']:,.0f} B per lead** (target <= 600; includes the due "
        "sets and allocator overhead).",
        f"- MEMORY USAGE over {mem['sample_size']:,} sampled leads: lead key "
        f"{mem['lead_state_bytes']:,.0f} B, of which the value {mem['value_bytes']:,.0f} B "
        f"(8-byte write version + MessagePack state, seen ids inline); due sets "
        f"{mem['due_zset_bytes']:,} B in all for {mem['due_members']:,} leads.",
    ]
    work = mem.get("workload")
    if work:
        parts.append(
            f"- Replay workload's leads (first full (a) run, {work['sample_size']:,} sampled): "
            f"lead key {work['lead_state_bytes']:,.0f} B, value {work['value_bytes']:,.0f} B "
            f"({work['seen_ids']:.1f} event ids in the 7-day dedup window)."
        )
    parts.append("")
    return parts


def _stages(st: dict[str, Any]) -> list[str]:
    redis_us = st.get("redis_us", st.get("lua_us", {}))
    rows = [(k, v) for k, v in st["python_us"].items()] + [(k, v) for k, v in redis_us.items()]
    return [
        f"## Stage costs per event (full job, in-process, no Kafka; {st['events']:,} events)",
        "",
        table(["stage", "us/event"], rows, 2),
        "Python stages: best of 3, in the worker's order and batch shape. commit.lua: best of "
        "2, the runtime's Pipeline applying the events in event-time order to a fresh prefix; "
        "Redis CPU is its main thread's CPU time (INFO cpu), commandstats is wall time inside "
        "EVALSHA (includes waiting for a CPU).",
        "",
    ]


def _profile(prof: dict[str, Any]) -> list[str]:
    if "top_self" not in prof:
        return [f"Profile failed: {prof.get('error', '')[-500:]}", ""]
    parts = [
        f"## Profile hint: (a)'s hot path under cProfile, {prof.get('job', 'full')} job "
        f"({prof['events']:,.0f} events, {prof['events_per_s']:,.0f}/s while profiled)",
        "",
    ]
    plain = prof.get("unprofiled") or {}
    if plain.get("seconds"):
        parts += [
            f"Unprofiled just before: {plain['events'] / plain['seconds']:,.0f} events/s; "
            f"garbage-collector pauses {plain['gc_seconds']:.2f}s of {plain['seconds']:.1f}s "
            f"({plain['gc_seconds'] / plain['seconds']:.0%}), "
            f"{plain['gc_collections_gen2']:.0f} full collections, "
            f"{plain['gc_tracked_objects']:,.0f} objects tracked by the GC.",
            "",
        ]
    rows: list[tuple[Any, ...]] = [
        (x["function"], x["calls"], x["us_per_event_self"], x["us_per_event_cum"])
        for x in prof["top_self"][:15]
    ]
    parts += [
        table(["function (by self time)", "calls", "self us/event", "cum us/event"], rows, 2),
        "",
    ]
    rows = [
        (x["function"], x["calls"], x["us_per_event_cum"])
        for x in prof["top_cumulative"]
        if "streamscore" in x["function"] or "benchmarks" in x["function"]
    ][:15]
    parts += [
        table(["streamscore function (cumulative)", "calls", "cum us/event"], rows, 2),
        f"Full listing: {prof['text_path']}",
        "",
    ]
    return parts


def _pyspy(spy: dict[str, Any]) -> list[str]:
    if "top_self" not in spy:
        return [f"py-spy failed: {spy.get('error', '')[-500:]}", ""]
    rows = [(x["function"], x["share"] * 100) for x in spy["top_self"][:15]]
    incl = [(x["function"], x["share"] * 100) for x in spy["top_inclusive"][:20]]
    return [
        f"## py-spy on the real worker process ({spy['samples']:,} samples, at "
        f"{spy.get('rate', 250)}/s for {spy.get('seconds', 10)}s: on CPU in Python "
        f"{spy['active_share']:.0%} of the wall time)",
        "",
        table(["function (leaf)", "% of samples"], rows),
        "",
        table(["streamscore function (inclusive)", "% of samples"], incl),
        "",
    ]


def _footer(r: dict[str, Any]) -> list[str]:
    code = r["code"]
    m = r["machine"]
    return [
        f"Code: commit {str(code['commit'])[:10]}"
        + (" + uncommitted changes" if code["uncommitted_changes"] else "")
        + f" (streamscore/ content sha256 {str(code['content_sha256'])[:12]})"
        + (
            "; WARNING: streamscore/ changed during the run"
            if r.get("code_changed_during_run")
            else ""
        )
        + ".",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory']}, {m['implementation']} "
        f"{m['python']}, Linux {m['kernel']}. Broker: Tansu (memory), Redis-protocol server: "
        f"{r.get('redis_server', 'Valkey')}, all on this machine.",
    ]
