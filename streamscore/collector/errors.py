"""Why the collector refuses a request: a closed set of codes, each with its HTTP status."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal, get_args

from streamscore.errors import StreamscoreError

Reason = Literal[
    "missing_write_key",
    "invalid_write_key",
    "origin_not_allowed",
    "request_too_large",
    "message_too_large",
    "unsupported_encoding",
    "bad_gzip",
    "malformed_json",
    "not_an_object",
    "bad_batch",
    "bad_type",
    "missing_field",
    "missing_lead_id",
    "bad_lead_id",
    "not_found",
    "method_not_allowed",
    "overloaded",
    "broker_unavailable",
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)

# The SDKs never retry 400, 401, 403, 404, 413 or 415 (the batch is dropped and reported to
# on_error), and retry 429 and 503 with backoff: so only the broker's trouble is a 429 or 503.
STATUS: Mapping[Reason, int] = MappingProxyType(
    {
        "missing_write_key": 401,
        "invalid_write_key": 401,
        "origin_not_allowed": 403,
        "request_too_large": 413,
        "message_too_large": 400,
        "unsupported_encoding": 415,
        "bad_gzip": 400,
        "malformed_json": 400,
        "not_an_object": 400,
        "bad_batch": 400,
        "bad_type": 400,
        "missing_field": 400,
        "missing_lead_id": 400,
        "bad_lead_id": 400,
        "not_found": 404,
        "method_not_allowed": 405,
        "overloaded": 429,
        "broker_unavailable": 503,
    }
)


class Rejected(StreamscoreError):
    """A request answered with an error. After a 4xx nothing of it was produced; after a 503
    some of its events may have been, and the client's retry repeats their messageIds."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        self.status = STATUS[reason]
        super().__init__(f"{reason}: {detail}")


class CollectorStartError(StreamscoreError):
    """The collector could not connect its producer to the broker."""
