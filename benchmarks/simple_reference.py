"""The simple job's oracle: per lead, the sum of its decayed awards, judged in event-time order.

Every run of the simple job must end with these per-lead scores and this set of handoffs. The
arithmetic shares nothing with the runs: each evaluation sums the lead's awards so far afresh,
each one decayed from its own time, rather than carrying a decayed score from event to event.
Decay factors are taken relative to the lead's first event (2^((t_i - t0)/h) stays below 20 over
the benchmark's 30 days), so a lead's sum at event k is one pass over a list of k terms.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from benchmarks.simple_job import HALF_LIFE_MS, HANDOFF_AT, REARM_BELOW


class SimpleEvent(NamedTuple):
    """One scored event of the simple job."""

    lead_id: str
    event_id: str
    time_ms: int
    points: float


class LeadScore(NamedTuple):
    """A lead's score at the time of its last event."""

    score: float
    time_ms: int


@dataclass
class Expected:
    """What every run of the simple job must end with."""

    scores: dict[str, LeadScore] = field(default_factory=dict)
    handoffs: set[tuple[str, str]] = field(default_factory=set)  # (lead id, triggering event id)


def decayed_sum(awards: list[tuple[int, float]], t_ms: int, decay_penalties: bool = True) -> float:
    """The literal definition: sum of p * 2^((t_i - t) / h) over awards at or before t."""
    total = 0.0
    for t_i, p in awards:
        if t_i > t_ms:
            continue
        decays = p > 0 or decay_penalties
        total += p * math.pow(2.0, (t_i - t_ms) / HALF_LIFE_MS) if decays else p
    return total


def reference(events: Iterable[SimpleEvent], decay_penalties: bool = True) -> Expected:
    """Scores and handoffs of the simple job, each lead's events taken in (time, id) order.

    At each event: the lead re-arms if its score, decayed to the event's time, is below
    REARM_BELOW; the event's points are added; it re-arms if the score is now below
    REARM_BELOW; an armed lead at HANDOFF_AT or more hands off, naming this event, and disarms.
    With decay_penalties False, negative points keep their full value (streamscore's default).
    """
    by_lead: dict[str, list[SimpleEvent]] = defaultdict(list)
    for ev in events:
        by_lead[ev.lead_id].append(ev)
    out = Expected()
    for lead_id, lead_events in by_lead.items():
        lead_events.sort(key=lambda e: (e.time_ms, e.event_id))
        t0 = lead_events[0].time_ms
        decaying: list[float] = []  # p * 2^((t_i - t0)/h) of every decaying award so far
        flat = 0.0  # undecayed penalties (decay_penalties False)
        armed = True
        score = 0.0
        for ev in lead_events:
            scale = math.pow(2.0, (t0 - ev.time_ms) / HALF_LIFE_MS)
            prior = sum(decaying)
            if scale * prior + flat < REARM_BELOW:
                armed = True
            if ev.points > 0 or decay_penalties:
                term = ev.points * math.pow(2.0, (ev.time_ms - t0) / HALF_LIFE_MS)
                decaying.append(term)
                score = scale * (prior + term) + flat
            else:
                flat += ev.points
                score = scale * prior + flat
            if score < REARM_BELOW:
                armed = True
            if armed and score >= HANDOFF_AT:
                out.handoffs.add((lead_id, ev.event_id))
                armed = False
        out.scores[lead_id] = LeadScore(score, lead_events[-1].time_ms)
    return out
