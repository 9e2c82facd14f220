"""Webhook request signatures (Stripe-style): sign for senders, verify for receivers.

The header is `X-Streamscore-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`, the HMAC keyed by
the shared signing secret over `"<t>.<body>"`. Signing the timestamp with the body lets a
receiver reject a captured request replayed later: it checks the HMAC, then that `t` lies within
its tolerance of its own clock. A header may carry several `v1=` values (one per secret while a
secret is being rotated); a match of any one verifies. Pure: `now` is a parameter.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

SIGNATURE_HEADER: Final = "X-Streamscore-Signature"
TIMESTAMP_HEADER: Final = "X-Streamscore-Timestamp"
SIGNATURE_SCHEME: Final = "v1"
#: A receiver's default window either side of its clock; Stripe's libraries use the same.
DEFAULT_TOLERANCE_S: Final = 300.0


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def compute_signature(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def signature_header(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The value of X-Streamscore-Signature for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},{SIGNATURE_SCHEME}={compute_signature(secret, timestamp, body)}"


def parse_signature_header(header: str) -> tuple[int, list[str]] | None:
    """(timestamp, v1 signatures) of a header, or None when it is malformed."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            return None
        if key == "t":
            # One timestamp only, plain digits: "t=+1" or "t=1_000" must not parse as ints do.
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return None
            timestamp = int(value)
        elif key == SIGNATURE_SCHEME:
            signatures.append(value)
        # Other schemes are ignored, so a later scheme can be added alongside v1.
    if timestamp is None or not signatures:
        return None
    return timestamp, signatures


def verify_signature(
    secret: str | bytes,
    header: str,
    body: bytes,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """True when `header` signs exactly `body` under `secret`, timed within `tolerance_s` of `now`.

    `body` must be the raw request body as received (before any JSON parsing), `now` the
    receiver's unix time in seconds. A malformed header, a timestamp outside the tolerance
    (either side: the sender's clock may run ahead) or no matching `v1` signature gives False.
    """
    parsed = parse_signature_header(header)
    if parsed is None:
        return False
    timestamp, signatures = parsed
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = compute_signature(secret, timestamp, body)
    # compare_digest: a byte-by-byte comparison would leak, through its timing, how much of a
    # forged signature is right. Every candidate is compared, so the count of v1 values does
    # not change the time either.
    want = expected.encode("ascii")
    matched = False
    for candidate in signatures:
        # As bytes: compare_digest refuses a str with non-ASCII characters.
        matched |= hmac.compare_digest(want, candidate.encode("utf-8", "surrogatepass"))
    return matched
