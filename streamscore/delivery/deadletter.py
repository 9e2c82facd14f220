"""The delivery dead-letter record (schemas/delivery-dead-letter.v1.json) and secret-free webhook
descriptions. Pure."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from streamscore.delivery.policy import DEAD_LETTER_REASONS
from streamscore.events import format_time_ms

DELIVERY_DEAD_LETTER_SCHEMA: Final = "streamscore.delivery_dead_letter.v1"
#: A poison record's bytes are kept up to this size (base64 grows it by 4/3): enough to see
#: what it was, far under the producer's 1 MB request limit.
MAX_ORIGINAL_BYTES: Final = 256 * 1024
MAX_DETAIL_CHARS: Final = 1024
MAX_RESPONSE_CHARS: Final = 512


def redact_url(url: str) -> str:
    """`scheme://host[:port]` of a webhook URL: no user info, path or query, which may be
    credentials (a Slack webhook's path is its secret)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


@dataclass(frozen=True, slots=True)
class WebhookRef:
    """A configured webhook as logs, metrics and dead letters may name it: index and host."""

    index: int
    redacted: str

    def describe(self) -> dict[str, Any]:
        """The `webhook` object of a dead letter."""
        return {"index": self.index, "url": self.redacted}


def delivery_dead_letter_id(topic: str, partition: int, offset: int, webhook: int | None) -> str:
    """Deterministic id: a re-sent dead letter (after a crash) carries the same id."""
    source = f"{topic}\x00{partition}\x00{offset}\x00{'' if webhook is None else webhook}"
    return hashlib.blake2b(source.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def delivery_dead_letter(
    *,
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    failed_at_ms: int,
    handoff: dict[str, Any] | None,
    webhook: WebhookRef | None = None,
    outcome: str | None = None,
    status: int | None = None,
    attempts: int = 0,
    response_excerpt: str | None = None,
    original: bytes | None = None,
) -> bytes:
    """The orjson-encoded dead letter of one handoff record for one webhook (or of a poison
    record, with `handoff` None and its bytes as `original`)."""
    if reason not in DEAD_LETTER_REASONS:
        raise ValueError(
            f"delivery dead-letter reason {reason!r} is not one of {DEAD_LETTER_REASONS}"
        )
    kept = original[:MAX_ORIGINAL_BYTES] if original is not None else None
    return orjson.dumps(
        {
            "delivery_dead_letter_id": delivery_dead_letter_id(
                topic, partition, offset, webhook.index if webhook else None
            ),
            "reason": reason,
            "detail": detail[:MAX_DETAIL_CHARS],
            "handoff_id": handoff["handoff_id"] if handoff is not None else None,
            "webhook": webhook.describe() if webhook is not None else None,
            "outcome": outcome,
            "status": status,
            "attempts": attempts,
            "response_excerpt": (
                response_excerpt[:MAX_RESPONSE_CHARS] if response_excerpt is not None else None
            ),
            "source_topic": topic,
            "partition": partition,
            "offset": offset,
            "failed_at": format_time_ms(failed_at_ms),
            "handoff": handoff,
            "original_base64": base64.b64encode(kept).decode("ascii") if kept is not None else None,
            "original_size": len(original) if original is not None else None,
            "schema": DELIVERY_DEAD_LETTER_SCHEMA,
        }
    )
