"""The tombstone a forget emits on the forgotten topic (schemas/forgotten.v1.json)."""

from __future__ import annotations

import hashlib
from typing import Final, Literal

import orjson

from streamscore.events.timefmt import format_time_ms

FORGOTTEN_SCHEMA: Final = "streamscore.forgotten.v1"
#: The longest reason a tombstone carries (a ticket reference, "GDPR art. 17 request"...).
MAX_REASON_CHARS: Final = 512
#: forgotten: the lead had state, now gone; already_forgotten: no state, forgotten before;
#: not_found: no state and never forgotten (still recorded: its events may be on their way).
ForgetResult = Literal["forgotten", "already_forgotten", "not_found"]


def forget_id(lead_id: str, forget_ms: int) -> str:
    """Deterministic id of one forget: a tombstone re-sent from the outbox carries the same."""
    text = f"forget\x00{lead_id}\x00{forget_ms}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, digest_size=16).hexdigest()


def tombstone_message(
    lead_id: str,
    forget_ms: int,
    result: ForgetResult,
    withdrawn: int,
    reason: str | None,
) -> tuple[bytes, bytes]:
    """(key, value) of the forgotten topic's message, keyed by lead id like every topic."""
    body = {
        "forget_id": forget_id(lead_id, forget_ms),
        "lead_id": lead_id,
        "forgotten_at": format_time_ms(forget_ms),
        "result": result,
        "outputs_withdrawn": withdrawn,
        "reason": reason[:MAX_REASON_CHARS] if reason else None,
        "schema": FORGOTTEN_SCHEMA,
    }
    return lead_id.encode("utf-8", "surrogatepass"), orjson.dumps(body)
