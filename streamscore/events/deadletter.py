"""The dead-letter record for a rejected input message (schemas/dead-letter.v1.json)."""

from __future__ import annotations

import base64
from typing import Final

import orjson

from streamscore.events.rejects import REJECT_REASONS
from streamscore.events.timefmt import format_time_ms

DEAD_LETTER_SCHEMA: Final = "streamscore.dead_letter.v1"
MAX_ORIGINAL_TEXT_CHARS: Final = 4096
MAX_DETAIL_CHARS: Final = 1024


def dead_letter_record(
    raw: bytes | None,
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    received_at_ms: int,
) -> bytes:
    """The orjson-encoded dead-letter record for `raw`; `reason` must be one of REJECT_REASONS."""
    if reason not in REJECT_REASONS:
        raise ValueError(f"dead-letter reason {reason!r} is not one of {REJECT_REASONS}")
    original = bytes(raw) if raw is not None else b""
    try:
        text: str | None = original.decode("utf-8")[:MAX_ORIGINAL_TEXT_CHARS]
    except UnicodeDecodeError:
        text = None
    if raw is None:
        text = None  # a tombstone has no text, not an empty one
    return orjson.dumps(
        {
            "reason": reason,
            "detail": detail[:MAX_DETAIL_CHARS],
            "source_topic": topic,
            "partition": partition,
            "offset": offset,
            "received_at": format_time_ms(received_at_ms),
            "original_base64": base64.b64encode(original).decode("ascii"),
            "original_text": text,
            "schema": DEAD_LETTER_SCHEMA,
        }
    )
