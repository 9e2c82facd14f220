"""Request bodies: bounded reading of gzip or plain bytes, and the JSON object inside."""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from streamscore.collector.errors import Rejected
from streamscore.events.rejects import json_kind

# 16 + MAX_WBITS: a gzip header and trailer, as Content-Encoding: gzip sends.
_GZIP_WBITS = 16 + zlib.MAX_WBITS


def decode_body(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """The body's bytes after Content-Encoding; raises Rejected beyond `limit` decoded bytes."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        body = raw
    elif coding in ("gzip", "x-gzip"):
        body = gunzip(raw, limit)
    else:
        raise Rejected("unsupported_encoding", f"Content-Encoding {coding!r}: use gzip or none")
    if len(body) > limit:
        raise Rejected("request_too_large", f"body is {len(body)} bytes, limit {limit}")
    return body


def gunzip(raw: bytes, limit: int) -> bytes:
    """Decompress one or more gzip members, never holding more than limit + 1 bytes of output."""
    out = bytearray()
    data = raw
    while True:
        inflater = zlib.decompressobj(_GZIP_WBITS)
        try:
            # max_length bounds the output: a small body cannot inflate into a huge one.
            out += inflater.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise Rejected("bad_gzip", f"body is not valid gzip: {exc}") from None
        if len(out) > limit:
            raise Rejected("request_too_large", f"body inflates beyond {limit} bytes")
        if not inflater.eof:
            raise Rejected("bad_gzip", "gzip body is truncated")
        data = inflater.unused_data
        if not data:
            return bytes(out)


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; raises Rejected otherwise."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejected("malformed_json", f"body is not JSON (UTF-8): {exc}") from None
    if not isinstance(doc, dict):
        raise Rejected("not_an_object", f"body is a JSON {json_kind(doc)}, not an object")
    return doc
