"""Markdown tables of the benchmark results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


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


def throughput_table(runs: Sequence[dict[str, Any]]) -> str:
    """Rows (a), (b), (c): events, seconds, events/s, CPU, peak RSS, server CPU."""
    rows = [
        (
            f"({r['name']}) {r['label']}",
            r["events"],
            r["seconds"],
            round(r["events_per_s"]),
            r["cpu_s"],
            r["peak_rss_mb"],
            r["valkey_cpu_s"],
            r["broker_cpu_s"],
            r.get("others_cpu_s"),
            ("complete" if r["completed"] else "bounded window")
            + (f"; {r['note']}" if r.get("note") else ""),
        )
        for r in runs
    ]
    return table(
        [
            "run",
            "events",
            "seconds",
            "events/s",
            "CPU s",
            "peak RSS MB",
            "Valkey CPU s",
            "broker CPU s",
            "other procs CPU s",
            "window",
        ],
        rows,
    )


def latency_table(rates: Sequence[dict[str, Any]]) -> str:
    """One row per input rate."""
    rows = [
        (
            round(r["target_rate"]),
            round(r["achieved_rate"]),
            r["events"],
            f"{r['handoffs']}/{r['hot_leads']}",
            r["p50_ms"],
            r["p99_ms"],
            r["max_ms"],
            r["p50_from_create_ms"],
            r["p99_from_create_ms"],
            r["scored_p50_ms"],
            r["scored_p99_ms"],
            r.get("events_per_apply"),
            r.get("ms_per_apply"),
            r["cpu_cores"].get("worker"),
            r["cpu_cores"].get("valkey"),
            r["cpu_cores"].get("broker"),
            r["cpu_cores"].get("bench"),
            r["cpu_cores"].get("others"),
        )
        for r in rates
    ]
    return table(
        [
            "target ev/s",
            "sent ev/s",
            "events",
            "handoffs/hot leads",
            "append->handoff p50 ms",
            "p99 ms",
            "max ms",
            "create->handoff p50 ms",
            "p99 ms",
            "event->scored p50 ms",
            "event->scored p99 ms",
            "events/EVALSHA",
            "ms/EVALSHA",
            "worker cores",
            "Valkey cores",
            "broker cores",
            "bench (producer) cores",
            "other procs cores",
        ],
        rows,
    )
