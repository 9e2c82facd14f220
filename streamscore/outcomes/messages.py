"""Output messages of the outcomes loop (schemas/sla-breach.v1.json)."""

from __future__ import annotations

import hashlib
from typing import Final

import orjson

from streamscore.events import format_time_ms
from streamscore.outcomes.funnel import SlaBreach

SLA_BREACH_SCHEMA: Final = "streamscore.sla_breach.v1"


def breach_id(handoff_id: str) -> str:
    """Deterministic id of a handoff's SLA breach: a re-send after a crash carries the same id."""
    digest = hashlib.blake2b(
        f"sla\x00{handoff_id}".encode("utf-8", "surrogatepass"), digest_size=16
    )
    return digest.hexdigest()


def sla_breach_message(lead_id: str, breach: SlaBreach, detected_ms: int) -> tuple[bytes, bytes]:
    """(key, value) of the sla-breaches message for an SlaBreach effect found at detected_ms."""
    body = {
        "breach_id": breach_id(breach.handoff_id),
        "lead_id": lead_id,
        "handoff_id": breach.handoff_id,
        "tier": breach.tier,
        "handoff_time": format_time_ms(breach.handoff_ms),
        "deadline": format_time_ms(breach.deadline_ms),
        "detected_at": format_time_ms(detected_ms),
        "model": breach.model,
        "rules_version": breach.rules_version,
        "schema": SLA_BREACH_SCHEMA,
    }
    return lead_id.encode("utf-8", "surrogatepass"), orjson.dumps(body)
