"""The account roll-up's cost on the hot path: `python -m benchmarks.accounts_cost`.

Scores the same events with the worker's per-record rules (runtime/scorer.py's Scorer.event,
the pure part of the hot path: no Kafka, no Redis) under the example rules without and with an
`accounts:` section, and reports the best of `--repeat` runs in microseconds an event, and how
many account records the leads sent. Every lead has a company email, so with accounts every
event that awards points also sends one record. The two variants run interleaved, so load on a
shared machine hits both alike. To compare two trees, run it with PYTHONPATH set to each in turn.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import orjson

from streamscore.events import Limits, TopicKind, parse_event
from streamscore.events.envelope import Event
from streamscore.events.timefmt import format_time_ms
from streamscore.runtime.lanes import Model
from streamscore.runtime.leads import CachedLead
from streamscore.runtime.scorer import Facts, GroupWork, Scorer
from streamscore.scoring.rules import CompiledRules, parse_rules_text
from streamscore.scoring.state import new_lead

RULES_FILE = Path(__file__).resolve().parents[1] / "examples" / "rules.yaml"
ACCOUNTS = """
accounts:
  top: 3
  decay: {half_life: 14d}
  fit: [{id: big, when: {employees: {gte: 200}}, points: 30}]
  tiers: [{name: cold}, {name: engaged, enter: 80}, {name: target, enter: 150, exit: 130}]
  handoff: {tier: target}
"""
T0 = 1_760_000_000_000


def events(n: int, leads: int) -> list[Event]:
    """Page views of `leads` leads from 50 companies; each lead's first event an identify."""
    out = []
    limits = Limits(max_age_ms=10**13)
    for i in range(n):
        lead = f"u{i % leads}"
        time_ms = format_time_ms(T0 + i * 1000)
        if i < leads:
            doc = {"type": "identify", "userId": lead, "messageId": f"m{i}", "timestamp": time_ms,
                   "traits": {"email": f"{lead}@company{i % 50}.com"}}  # fmt: skip
            kind = TopicKind.PROFILES
        else:
            path = "/pricing" if i % 3 else "/docs"
            doc = {"type": "page", "userId": lead, "messageId": f"m{i}", "timestamp": time_ms,
                   "properties": {"path": path}}  # fmt: skip
            kind = TopicKind.PAGE_VIEWS
        out.append(parse_event(orjson.dumps(doc), kind, T0 + n * 1000, limits))
    return out


def run(evs: list[Event], rules: CompiledRules, leads: int) -> tuple[float, int]:
    """(seconds, account records sent) for one pass over fresh leads."""
    scorer = Scorer(0, 12, "sla")
    cached = {
        f"u{i}": CachedLead(f"u{i}", 0, new_lead(f"u{i}"), 0, b"", None) for i in range(leads)
    }
    facts, w = Facts(), GroupWork()
    model = Model("live", rules)
    started = time.perf_counter()
    for ev in evs:
        scorer.event(cached[ev.lead_id], ev, T0, w, model, facts)
    return time.perf_counter() - started, len(w.records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--leads", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    text = RULES_FILE.read_text(encoding="utf-8")
    variants = {
        "without accounts:": parse_rules_text(text, "rules.yaml"),
        "with accounts:": parse_rules_text(text + ACCOUNTS, "rules.yaml"),
    }
    evs = events(args.events, args.leads)
    best = dict.fromkeys(variants, float("inf"))
    sent = dict.fromkeys(variants, 0)
    for _ in range(args.repeat):
        for name, rules in variants.items():
            seconds, sent[name] = run(evs, rules, args.leads)
            best[name] = min(best[name], seconds)
    for name in variants:
        print(
            f"{name:18} {best[name] / len(evs) * 1e6:6.2f} us/event "
            f"({sent[name]:,} account records for {len(evs):,} events)"
        )


if __name__ == "__main__":
    main()
