"""Format the store's output tuples as handoff and tier-change messages (schemas/*.v1.json)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from streamscore.events.timefmt import format_time_ms
from streamscore.scoring.rules import BANT_CRITERIA, GRADES
from streamscore.scoring.state import REASON_DECIMALS
from streamscore.store.outbox import ScoredOutput


@dataclass(frozen=True, slots=True)
class OutputMessage:
    """One message for the handoff or tier-change topic."""

    kind: str  # "handoff" or "tier_change"
    key: bytes
    value: bytes
    new_tier: str
    direction: str


def output_id(lead_id: str, seq: int) -> str:
    """Deterministic id of a lead's seq-th output: a re-send after a crash carries the same id."""
    digest = hashlib.blake2b(f"{lead_id}\x00{seq}".encode("utf-8", "surrogatepass"), digest_size=16)
    return digest.hexdigest()


def format_output(decoded: ScoredOutput, tier_rank: dict[str, int]) -> OutputMessage:
    """Build the message for one output of the scoring engine."""
    out = decoded.output
    direction = "up" if tier_rank.get(out.new_tier, 0) >= tier_rank.get(out.old_tier, 0) else "down"
    common = {
        "lead_id": out.lead_id,
        "score": round(out.score, 6),
        "old_tier": out.old_tier,
        "new_tier": out.new_tier,
        "triggering_event_id": out.event_id,
        "event_time": format_time_ms(out.time_ms),
        "scored_at": format_time_ms(decoded.scored_at),
        "rules_version": out.rules_version,
    }
    if out.kind == "handoff":
        body = {
            "handoff_id": output_id(out.lead_id, out.seq),
            **common,
            "engagement": round(out.engagement, 6),
            "fit": round(out.fit, 6),
            "grade": GRADES[out.grade - 1],
            "bant": {c: bool(out.bant_mask >> i & 1) for i, c in enumerate(BANT_CRITERIA)},
            "bant_met": out.bant_mask.bit_count(),
            "reasons": [{"rule": r, "points": round(p, REASON_DECIMALS)} for r, p in out.reasons],
            "schema": "streamscore.handoff.v1",
        }
    else:
        body = {
            "change_id": output_id(out.lead_id, out.seq),
            **common,
            "direction": direction,
            "cause": out.cause,
            "schema": "streamscore.tier_change.v1",
        }
    return OutputMessage(
        out.kind,
        out.lead_id.encode("utf-8", "surrogatepass"),
        orjson.dumps(body),
        out.new_tier,
        direction,
    )
