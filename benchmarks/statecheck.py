"""Compare per-lead state left in Redis by two runs (scores strictly, tiers as information)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from streamscore.scoring.rules import CompiledRules
from streamscore.scoring.state import score_at
from streamscore.store.codec import decode_lead
from streamscore.store.commit import split_value
from streamscore.store.keys import KeySpace

REL_TOL = 1e-9
ABS_TOL = 1e-9  # scores near zero (penalties cancelling points) need an absolute floor


@dataclass(frozen=True, slots=True)
class LeadScore:
    """The parts of a lead's state that the check compares."""

    score: float
    tier: int
    lt: int


@dataclass
class Comparison:
    """Differences between two runs' lead states."""

    left: str
    right: str
    leads_left: int
    leads_right: int
    missing: int = 0
    score_mismatches: int = 0
    lt_mismatches: int = 0
    tier_differences: int = 0
    max_rel_diff: float = 0.0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Same leads, same scores and evaluation times."""
        return not (self.missing or self.score_mismatches or self.lt_mismatches)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**asdict(self), "ok": self.ok}


def read_scores(
    client: redis.Redis, keyspace: KeySpace, rules: CompiledRules
) -> dict[str, LeadScore]:
    """Every lead under the prefix: its score at its last evaluation (scoring.state.score_at).

    Decoded as the worker decodes a loaded value (store.codec), so the one score formula is
    the engine's own. Read with a synchronous pipeline of GETs: the check runs once a run has
    stopped, outside every measured window.
    """
    out: dict[str, LeadScore] = {}
    for group in range(keyspace.groups):
        pattern = f"{keyspace.prefix}:{{g{group}}}:lead:*"
        keys = list(client.scan_iter(match=pattern, count=5000))
        for i in range(0, len(keys), 2000):
            chunk = keys[i : i + 2000]
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.get(key)
            for raw in pipe.execute():
                state = decode_lead(split_value(raw)[1])
                lt_ms = state.last_ms if state.last_ms is not None else 0
                out[state.lead_id] = LeadScore(score_at(state, rules, lt_ms), state.tier, lt_ms)
    return out


def compare(
    left_name: str,
    left: dict[str, LeadScore],
    right_name: str,
    right: dict[str, LeadScore],
    max_examples: int = 5,
) -> Comparison:
    """Scores must agree within 1e-9 relative; tier differences are counted separately."""
    result = Comparison(left_name, right_name, len(left), len(right))
    result.missing = len(left.keys() ^ right.keys())
    for lead_id, x in left.items():
        y = right.get(lead_id)
        if y is None:
            continue
        scale = max(abs(x.score), abs(y.score))
        diff = abs(x.score - y.score)
        if scale > 0:
            result.max_rel_diff = max(result.max_rel_diff, diff / scale)
        bad_score = not math.isclose(x.score, y.score, rel_tol=REL_TOL, abs_tol=ABS_TOL)
        bad_lt = x.lt != y.lt
        result.score_mismatches += bad_score
        result.lt_mismatches += bad_lt
        result.tier_differences += x.tier != y.tier
        if (bad_score or bad_lt) and len(result.examples) < max_examples:
            result.examples.append(
                {"lead_id": lead_id, left_name: asdict(x), right_name: asdict(y)}
            )
    return result
