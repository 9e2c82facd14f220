"""Retry policy of a webhook request: outcome classes, which are retried, and how long to wait.

Pure: the jitter's random draw and the clock are parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Final, NamedTuple


class Outcome(StrEnum):
    """What one request ended with; a closed set, used as a metric label."""

    DELIVERED = "delivered"  # 2xx
    TIMEOUT = "timeout"  # no answer within delivery_timeout_s, or 408 Request Timeout
    CONNECTION_ERROR = "connection_error"  # refused, reset, DNS, TLS
    RATE_LIMITED = "rate_limited"  # 429
    SERVER_ERROR = "server_error"  # 5xx
    REDIRECTED = "redirected"  # 3xx: never followed, the signed body must reach only its URL
    REJECTED = "rejected"  # any other status: 4xx (the request itself is refused), 1xx


#: Outcomes worth another attempt: the receiver may answer differently later.
RETRYABLE: Final = frozenset(
    {Outcome.TIMEOUT, Outcome.CONNECTION_ERROR, Outcome.RATE_LIMITED, Outcome.SERVER_ERROR}
)

#: Why a handoff went to the delivery dead-letter topic (the `reason` field; a metric label).
DEAD_LETTER_REASONS: Final = (
    "rejected",  # an answer that no retry changes (4xx but 408/429, 3xx)
    "attempts_exhausted",  # the last attempt failed with a retryable outcome
    "retry_after_too_long",  # the receiver asked for a wait beyond delivery_backoff_max_s
    "invalid_handoff",  # the record on the handoff topic is not a handoff (poison)
)


def classify_status(status: int) -> Outcome:
    """The outcome class of an HTTP answer with this status code."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 408:
        return Outcome.TIMEOUT
    if status == 429:
        return Outcome.RATE_LIMITED
    if status >= 500:
        return Outcome.SERVER_ERROR
    if 300 <= status < 400:
        return Outcome.REDIRECTED
    return Outcome.REJECTED


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent
    or unreadable. A date in the past means no wait."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
        return None
    return max(moment.timestamp() - now, 0.0)


class Verdict(NamedTuple):
    """After a failed attempt: retry after `delay_s`, or stop with a dead-letter `reason`."""

    retry: bool
    delay_s: float
    reason: str | None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts per webhook and the exponential backoff between them."""

    attempts: int
    backoff_s: float
    backoff_max_s: float

    def backoff(self, retry: int, rand: float) -> float:
        """Delay before retry number `retry` (1 = the first retry); `rand` is uniform in [0, 1).

        Exponential, capped at backoff_max_s, with "equal jitter": uniform in [d/2, d), so
        that receivers recovering from an outage are not hit by every sender at once, and the
        wait never collapses to zero.
        """
        # min() before the power would overflow: 2**1000 is fine for ints, not floats.
        exponent = min(retry - 1, 64)
        delay = min(self.backoff_s * 2.0**exponent, self.backoff_max_s)
        return delay * (0.5 + 0.5 * rand)

    def decide(
        self, outcome: Outcome, attempt: int, retry_after_s: float | None, rand: float
    ) -> Verdict:
        """What to do after attempt number `attempt` (1-based) ended with `outcome`."""
        if outcome is Outcome.DELIVERED:
            return Verdict(False, 0.0, None)
        if outcome not in RETRYABLE:
            return Verdict(False, 0.0, "rejected")
        if attempt >= self.attempts:
            return Verdict(False, 0.0, "attempts_exhausted")
        delay = self.backoff(attempt, rand)
        if retry_after_s is not None and outcome in (Outcome.RATE_LIMITED, Outcome.SERVER_ERROR):
            # Retry-After comes with 429 and 503. Honour it as a floor, but a wait longer than
            # we ever wait would hold a concurrency slot (and the offsets behind it) that long:
            # give the handoff up to the dead-letter topic instead, where it can be replayed.
            if retry_after_s > self.backoff_max_s:
                return Verdict(False, 0.0, "retry_after_too_long")
            delay = max(delay, retry_after_s)
        return Verdict(True, delay, None)
