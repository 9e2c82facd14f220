"""Write-key authentication, as Segment does it: HTTP Basic auth (the key is the username), or
`writeKey` in the JSON body. Keys are compared in constant time and never logged."""

from __future__ import annotations

import binascii
import hmac
from base64 import b64decode
from collections.abc import Iterable

from streamscore.collector.errors import Rejected


class WriteKeys:
    """The set of accepted write keys."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(key.encode() for key in keys)
        if not self._keys:
            raise ValueError("no write keys")

    def accepts(self, key: str) -> bool:
        """Whether `key` is one of the write keys (compares against all of them, always)."""
        candidate = key.encode()
        found = False
        for known in self._keys:
            found |= hmac.compare_digest(candidate, known)
        return found

    def check(self, authorization: str | None, body_key: object) -> None:
        """Accept the request or raise Rejected: the Authorization header decides when present."""
        if authorization is not None:
            key = basic_username(authorization)
            if key is None:
                raise Rejected("invalid_write_key", "Authorization is not Basic <base64 key:>")
        elif isinstance(body_key, str):
            key = body_key
        else:
            raise Rejected(
                "missing_write_key",
                "no write key: send it as the Basic auth username, or as writeKey in the body",
            )
        if not self.accepts(key):
            raise Rejected("invalid_write_key", "the write key is not one of collector_write_keys")


def basic_username(authorization: str) -> str | None:
    """The username of an HTTP Basic Authorization header value, else None."""
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0]
