"""Read a lead's state hash (as apply_batch.lua writes it) into an explanation; pure."""

from __future__ import annotations

import math
from typing import Any

import orjson

from streamscore.events.timefmt import format_time_ms
from streamscore.scoring.rules import BANT_CRITERIA, GRADES, CompiledRules


def describe_lead(fields: dict[str, str], rules: CompiledRules, now_ms: int) -> dict[str, Any]:
    """Score, tier, grade, BANT and every rule's points, decayed to now_ms."""
    h_ms = rules.half_life_s * 1000.0
    anchor = float(fields.get("a", "0") or 0)
    at = max(now_ms, int(float(fields.get("lt", "0"))))

    def decayed(normalised: float) -> float:
        return normalised * math.pow(2.0, (anchor - at) / h_ms)

    engagement = decayed(float(fields.get("e", "0")))
    penalty = float(fields.get("pen", "0"))
    fit = float(fields.get("fit", "0"))
    base = fit if rules.basis == "total" else 0.0
    score = min(max(base + engagement + penalty, rules.floor), rules.ceiling)
    points: dict[str, float] = {}
    attributes: dict[str, Any] = {}
    for field, value in fields.items():
        kind, name = field[:2], field[2:]
        if kind == "r:":
            points[name] = points.get(name, 0.0) + decayed(float(value))
        elif kind == "n:":
            points[name] = points.get(name, 0.0) + float(value)
        elif kind == "p:":
            time_ms, attr_value, _fit, _mask, _dq, reasons = orjson.loads(value)
            attributes[name] = {"value": attr_value, "seen_at": format_time_ms(int(time_ms))}
            for rule_id, p in reasons or []:
                points[rule_id] = points.get(rule_id, 0.0) + float(p)
    mask = int(float(fields.get("bant", "0")))
    tier_index = min(int(float(fields.get("tier", "0"))), len(rules.tiers) - 1)
    return {
        "lead_id": fields.get("id"),
        "score": round(score, 3),
        "engagement": round(engagement, 3),
        "fit": round(fit, 3),
        "penalties": round(penalty, 3),
        "tier": rules.tiers[tier_index].name,
        "grade": GRADES[rules.grade_of(fit) - 1],
        "bant": {c: bool(mask >> i & 1) for i, c in enumerate(BANT_CRITERIA)},
        "disqualified": fields.get("dq") == "1" or fields.get("fdq") == "1",
        "handoff_armed": fields.get("arm", "1") == "1",
        "last_event_time": format_time_ms(int(float(fields["lt"]))) if "lt" in fields else None,
        "rules_version": fields.get("ver"),
        "as_of": format_time_ms(at),
        "contributions": [
            {"rule": r, "points": round(p, 3)}
            for r, p in sorted(points.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
        ],
        "attributes": attributes,
    }
