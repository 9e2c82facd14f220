"""(r) and (s) of the throughput phase: the shadow's rules and the issue-13 ratios."""

from __future__ import annotations

from pathlib import Path

from benchmarks.measure import RunResult
from benchmarks.phases.throughput import shadow_rules, simple_ratios
from benchmarks.session import SIMPLE_RULES_FILE
from streamscore.scoring.rules import load_rules


def _run(name: str, events_per_s: float, cpu_s: float, valkey_cpu_s: float) -> RunResult:
    return RunResult(
        name, name, 1000, 1000 / events_per_s, events_per_s, cpu_s, cpu_s, 100.0,
        valkey_cpu_s, 0.0, 0.0, True, 1000, 0, 1.0, 0,
    )  # fmt: skip


def test_shadow_rules_are_the_live_rules_under_another_version(tmp_path: Path) -> None:
    path = shadow_rules(tmp_path, SIMPLE_RULES_FILE)
    live, shadow = load_rules(SIMPLE_RULES_FILE), load_rules(path)
    assert shadow.version == f"{live.version}-shadow"
    # Nothing else changes: the same scores are expected in both namespaces.
    changed = [
        (a, b)
        for a, b in zip(
            SIMPLE_RULES_FILE.read_text().splitlines(), path.read_text().splitlines(), strict=True
        )
        if a != b
    ]
    assert changed == [(f'version: "{live.version}"', f'version: "{live.version}-shadow"')]
    assert shadow_rules(tmp_path, SIMPLE_RULES_FILE) == path  # written once per session


def test_ratios_give_replay_and_shadow_against_a() -> None:
    runs = {
        "a": _run("a", 10_000, 0.030, 0.005),  # 30 + 5 us an event
        "r": _run("r", 12_000, 0.028, 0.005),
        "s": _run("s", 6_000, 0.050, 0.010),  # 50 + 10 us an event
    }
    ratios = simple_ratios(runs)
    assert ratios["r_over_a"] == 1.2
    assert ratios["s_over_a"] == 0.6
    assert ratios["shadow_cpu_us"] is not None and abs(ratios["shadow_cpu_us"] - 25.0) < 1e-9
    assert ratios["shadow_process_cpu_us"] is not None
    assert abs(ratios["shadow_process_cpu_us"] - 20.0) < 1e-9
    assert ratios["a_over_q"] is None
