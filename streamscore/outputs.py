"""Format the store's output tuples as handoff and tier-change messages (schemas/*.v1.json)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from streamscore.scoring.rules import BANT_CRITERIA, GRADES

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


def rfc3339(ms: int) -> str:
    """Milliseconds since the epoch as an RFC 3339 UTC timestamp."""
    # timedelta keeps integer milliseconds exact where a float division would round.
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_output(row: list[Any], tier_rank: dict[str, int]) -> OutputMessage:
    """Build the message for one output tuple from apply_batch.lua or tick.lua."""
    (kind, lead_id, seq, old, new, score, engagement, fit, grade, bant, reasons, event_id,
     time_ms, cause, version, scored_at) = row  # fmt: skip
    seq = int(seq)
    direction = "up" if tier_rank.get(new, 0) >= tier_rank.get(old, 0) else "down"
    common = {
        "lead_id": lead_id,
        "score": round(float(score), 6),
        "old_tier": old,
        "new_tier": new,
        "triggering_event_id": event_id,
        "event_time": rfc3339(int(time_ms)),
        "scored_at": rfc3339(int(scored_at)),
        "rules_version": version,
    }
    if kind == "handoff":
        bant_mask = int(bant)
        body = {
            "handoff_id": output_id(lead_id, seq),
            **common,
            "engagement": round(float(engagement), 6),
            "fit": round(float(fit), 6),
            "grade": GRADES[int(grade) - 1],
            "bant": {c: bool(bant_mask >> i & 1) for i, c in enumerate(BANT_CRITERIA)},
            "bant_met": bant_mask.bit_count(),
            "reasons": [{"rule": r, "points": round(float(p), 6)} for r, p in (reasons or [])],
            "schema": "streamscore.handoff.v1",
        }
    else:
        body = {
            "change_id": output_id(lead_id, seq),
            **common,
            "direction": direction,
            "cause": cause,
            "schema": "streamscore.tier_change.v1",
        }
    return OutputMessage(
        kind, lead_id.encode("utf-8", "surrogatepass"), orjson.dumps(body), new, direction
    )
