"""A seeded, realistic sales funnel run through the real funnel API: counters for report tests
and the README screenshot (`python -m tests.outcome_sample docs/img/report.png`)."""

from __future__ import annotations

import math
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

from streamscore.outcomes.events import Outcome, OutcomeType
from streamscore.outcomes.funnel import (
    EMPTY,
    Funnel,
    ScoreSnapshot,
    apply_outcome,
    check_sla,
    record_handoff,
)
from streamscore.outcomes.kpi import Kpis, compute_kpis
from streamscore.scoring.outcome_rules import OutcomeRules
from streamscore.scoring.rules import load_rules
from tests.conftest import RULES_FILE

T0 = 1_772_000_000_000
DAY = 86_400_000
HOUR = 3_600_000
REJECT_REASONS = ["Not a fit", "No budget", "Student", "bad data", "Already a customer", "later"]
LOSS_REASONS = ["Too expensive", "Went with a competitor", "No decision", "missing features"]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def sample_counters(
    leads: int = 1500, seed: int = 7, versions: tuple[str, ...] = ("b2b-2026.11.1", "b2b-2026.10.3")
) -> tuple[Counter[str], OutcomeRules]:
    """Counters of `leads` handed-off leads whose conversion rises with their score."""
    rules = load_rules(RULES_FILE).outcomes
    rng = random.Random(seed)
    counters: Counter[str] = Counter()
    end = T0 + 60 * DAY
    for i in range(leads):
        version = versions[0] if i % 4 else versions[-1]
        facts = _lead(i, version, version == versions[0], rng, end)
        funnel: Funnel = EMPTY
        clock = T0
        for fact in sorted(facts, key=_time):
            clock = max(clock, _time(fact))
            if isinstance(fact, ScoreSnapshot):
                funnel, deltas, _ = record_handoff(funnel, fact, rules, clock)
            else:
                funnel, deltas, _ = apply_outcome(funnel, fact, None, rules, clock)
                if rng.random() < 0.02:  # a connector retry: the same outcome again
                    funnel, more, _ = apply_outcome(funnel, fact, None, rules, clock)
                    counters.update(more)
            counters.update(deltas)
        counters.update(check_sla(funnel, rules, end)[1])
    # outcomes for leads streamscore never handed off
    for j in range(40):
        stray = Outcome(f"s{j}", f"crm-only-{j}", OutcomeType.WON, T0 + rng.randrange(0, 50 * DAY))
        counters.update(apply_outcome(EMPTY, stray, None, rules, end)[1])
    return +counters, rules


def _lead(
    i: int, version: str, learned: bool, rng: random.Random, end: int
) -> list[ScoreSnapshot | Outcome]:
    """One handed-off lead and what sales did with it; `learned` rules rank it well."""
    at = T0 + rng.randrange(0, 58 * DAY)
    score = 70 + rng.expovariate(1 / 28)
    tier = "hot" if score >= 90 or rng.random() < 0.5 else "warm"
    quality = _sigmoid((score - 115) / 14) if learned else 0.35
    facts: list[ScoreSnapshot | Outcome] = [
        ScoreSnapshot(score, tier, rng.randint(1, 2), 0b0111, version, "live", f"h{i}", at)
    ]

    def outcome(kind: OutcomeType, t: int, reason: str | None = None) -> None:
        facts.append(Outcome(f"o{i}-{len(facts)}", f"lead-{i}", kind, t, reason=reason))

    touch = at + int(rng.lognormvariate(math.log(2.2 * HOUR), 1.2))
    if rng.random() < 0.05:
        touch = at - rng.randrange(HOUR, 3 * DAY)  # sales got there first
    if rng.random() < 0.93 and touch < end:
        outcome(OutcomeType.FIRST_TOUCH, touch)
    verdict = touch + rng.randrange(HOUR, 2 * DAY)
    if rng.random() < 0.12 + 0.25 * (1 - quality):
        outcome(OutcomeType.SALES_REJECTED, verdict, rng.choice(REJECT_REASONS))
        return facts
    outcome(OutcomeType.SALES_ACCEPTED, verdict)
    if rng.random() < 0.1 + 0.6 * quality:
        opened = verdict + rng.randrange(DAY, 10 * DAY)
        outcome(OutcomeType.OPPORTUNITY_CREATED, opened)
        closed = opened + rng.randrange(5 * DAY, 40 * DAY)
        if closed < end:
            if rng.random() < 0.2 + 0.5 * quality:
                outcome(OutcomeType.WON, closed)
            else:
                outcome(OutcomeType.LOST, closed, rng.choice(LOSS_REASONS))
    return facts


def _time(fact: ScoreSnapshot | Outcome) -> int:
    if isinstance(fact, ScoreSnapshot):
        assert fact.handoff_ms is not None
        return fact.handoff_ms
    return fact.time_ms


def sample_kpis(leads: int = 1500, seed: int = 7) -> tuple[Kpis, OutcomeRules]:
    """compute_kpis of sample_counters."""
    counters, rules = sample_counters(leads, seed)
    return compute_kpis(counters, rules.tiers), rules


def main(argv: list[str]) -> int:
    """Render the sample report and save a screenshot of its top at argv[0]."""
    from datetime import UTC, datetime

    from streamscore.outcomes.report import render_report
    from tests.browser import chromium, screenshot_report

    kpis, rules = sample_kpis()
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        render_report(kpis, page, tiers=rules.tiers, generated_at=datetime(2026, 3, 1, tzinfo=UTC))
        with chromium(Path(tmp)) as driver:
            screenshot_report(driver, page, Path(argv[0]))
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
