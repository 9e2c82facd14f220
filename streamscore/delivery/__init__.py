"""Handoff delivery: `streamscore deliver` posts each handoff to webhooks, signed, at least once.

Receivers verify requests with `verify_signature` (streamscore.delivery.signing).
"""

from streamscore.delivery.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature_header,
    verify_signature,
)

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "signature_header", "verify_signature"]
