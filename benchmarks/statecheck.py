"""Compare per-lead state left in Redis by two runs (scores strictly, tiers as information)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from streamscore.store.keys import KeySpace
from streamscore.store.wire import decode_lead_state

FIELDS = ("id", "a", "e", "pen", "lt", "tier", "fit")
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
    client: redis.Redis, keyspace: KeySpace, half_life_ms: float
) -> dict[str, LeadScore]:
    """Every lead under the prefix: score = fit + pen + e * 2^((a - lt) / h), tier, lt."""
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
                state = decode_lead_state(raw)
                lead_id, a, e, pen, lt, tier, fit = (state.get(name) for name in FIELDS)
                assert lead_id is not None
                lt_ms = int(float(lt)) if lt is not None else 0
                score = float(fit or 0) + float(pen or 0)
                if a is not None:
                    score += float(e or 0) * 2.0 ** ((float(a) - lt_ms) / half_life_ms)
                out[lead_id] = LeadScore(score, int(tier or 0), lt_ms)
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
