"""The one RFC 3339 time format of the event contract, in and out: epoch milliseconds <-> text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

# Same shape as `$defs.time.pattern` in schemas/*.v1.json (a test keeps them equal). The schema
# applies it; parse_event uses it only to name `bad_time` once the schema has rejected a message.
RFC3339_PATTERN: Final = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS: Final = timedelta(milliseconds=1)


def format_time_ms(time_ms: int) -> str:
    """Epoch milliseconds as RFC 3339 in UTC with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    # timedelta keeps integer milliseconds exact where a float division would round.
    return (EPOCH + timedelta(milliseconds=time_ms)).isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds of an ISO 8601 / RFC 3339 time with an offset, rounded down.

    Raises ValueError (with datetime's message, or "no timezone") for anything else.
    """
    # envelope.event_time_ms has these lines inline, for parse_event's speed; a property test
    # holds the two to the same results and errors.
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("no timezone")
    return (parsed - EPOCH) // ONE_MS
