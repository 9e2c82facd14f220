"""The dead-letter record for a rejected input message (schemas/dead-letter.v1.json)."""

from __future__ import annotations

import base64
import hashlib
from typing import Final

import orjson

from streamscore.events.rejects import REJECT_REASONS
from streamscore.events.timefmt import format_time_ms

DEAD_LETTER_SCHEMA: Final = "streamscore.dead_letter.v1"
MAX_ORIGINAL_TEXT_CHARS: Final = 4096
MAX_DETAIL_CHARS: Final = 1024
#: Room kept for the record's other fields when the original must be cut to fit `max_bytes`.
_FIELDS_ALLOWANCE: Final = 4 * MAX_ORIGINAL_TEXT_CHARS + 4 * MAX_DETAIL_CHARS + 2048


def dead_letter_id(topic: str, partition: int, offset: int) -> str:
    """Deterministic id of the dead letter for one source record: a re-send carries the same id."""
    source = f"{topic}\x00{partition}\x00{offset}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(source, digest_size=16).hexdigest()


def dead_letter_record(
    raw: bytes | None,
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    received_at_ms: int,
    max_bytes: int = 1_000_000,
) -> bytes:
    """The orjson-encoded dead letter for `raw`, at most `max_bytes` long.

    `reason` must be one of REJECT_REASONS. An original too large for the record to fit is cut
    (`original_truncated` true, `original_size` its full length), so that a dead letter is never
    refused by the producer for its size, which would leave the message nowhere.
    """
    if reason not in REJECT_REASONS:
        raise ValueError(f"dead-letter reason {reason!r} is not one of {REJECT_REASONS}")
    if max_bytes <= _FIELDS_ALLOWANCE:
        raise ValueError(f"max_bytes must exceed {_FIELDS_ALLOWANCE}, got {max_bytes}")
    original = bytes(raw) if raw is not None else b""
    size = len(original)
    # Base64 grows 4/3; the rest of the record is bounded by the allowance.
    keep = min(size, (max_bytes - _FIELDS_ALLOWANCE) * 3 // 4)
    truncated = keep < size
    original = original[:keep]
    text: str | None
    try:
        text = original.decode("utf-8")[:MAX_ORIGINAL_TEXT_CHARS]
    except UnicodeDecodeError:
        text = None
        if truncated:  # the cut may have split a character: decode what is whole
            text = original.decode("utf-8", "ignore")[:MAX_ORIGINAL_TEXT_CHARS] or None
    if raw is None:
        text = None  # a tombstone has no text, not an empty one
    return orjson.dumps(
        {
            "dead_letter_id": dead_letter_id(topic, partition, offset),
            "reason": reason,
            "detail": detail[:MAX_DETAIL_CHARS],
            "source_topic": topic,
            "partition": partition,
            "offset": offset,
            "received_at": format_time_ms(received_at_ms),
            "original_base64": base64.b64encode(original).decode("ascii"),
            "original_text": text,
            "original_size": size,
            "original_truncated": truncated,
            "schema": DEAD_LETTER_SCHEMA,
        }
    )
