"""The console's access checks: the token (bearer header or login form) and session cookies.

A person logs in once with the token (`console_token`) through a form; the console then sets a
session cookie that proves it without holding it: `<expiry>.<HMAC-SHA256(token, expiry)>`. The
cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it, which
also stops cross-site form posts) and Secure over HTTPS. Changing the token ends every session;
nothing is stored on the server. Scripts send the token itself as a bearer token instead.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final
from urllib.parse import urlsplit

COOKIE: Final = "ss_console"
_CONTEXT: Final = b"streamscore console session v1\x00"


def _mac(token: str, expires_s: int) -> str:
    message = _CONTEXT + str(expires_s).encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def session_value(token: str, expires_s: int) -> str:
    """The cookie value of a session that ends at `expires_s` (epoch seconds)."""
    return f"{expires_s}.{_mac(token, expires_s)}"


def session_valid(token: str, value: str | None, now_s: float) -> bool:
    """True when `value` is a session cookie made with `token` that has not expired."""
    if not value:
        return False
    expires, _, mac = value.partition(".")
    if not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
        return False
    expires_s = int(expires)
    return expires_s > now_s and hmac.compare_digest(mac.encode(), _mac(token, expires_s).encode())


def token_matches(token: str, given: str | None) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode())


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    scheme, _, given = (authorization or "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else None


def local_path(target: str | None, default: str = "/") -> str:
    """`target` if it is a path on this site (where to go after logging in), else `default`.

    Anything with a scheme or a host (`https://x`, `//x`, `/\\x`, which browsers read as
    `//x`) would send a person who just logged in to another site.
    """
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ord(c) < 0x20 or c == "\\" for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target
