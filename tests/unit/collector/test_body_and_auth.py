"""Request bodies (bounded gzip, JSON objects) and write-key authentication."""

from __future__ import annotations

import gzip
import os
from base64 import b64encode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamscore.collector.auth import WriteKeys, basic_username
from streamscore.collector.body import decode_body, gunzip, parse_object
from streamscore.collector.errors import Rejected


def basic(user: str, password: str = "") -> str:
    return "Basic " + b64encode(f"{user}:{password}".encode()).decode()


@given(data=st.binary(max_size=4096), members=st.integers(1, 3))
def test_gzip_round_trips_one_or_more_members(data: bytes, members: int) -> None:
    raw = b"".join(gzip.compress(data) for _ in range(members))
    assert decode_body(raw, "gzip", len(data) * members) == data * members


def test_gzip_output_is_bounded_before_it_is_held() -> None:
    bomb = gzip.compress(b"0" * 20_000_000)  # ~20 KB on the wire
    assert len(bomb) < 50_000
    with pytest.raises(Rejected) as caught:
        gunzip(bomb, 500 * 1024)
    assert caught.value.reason == "request_too_large" and caught.value.status == 413


def test_gzip_limit_is_inclusive() -> None:
    data = os.urandom(1000)
    assert decode_body(gzip.compress(data), "gzip", 1000) == data
    with pytest.raises(Rejected):
        decode_body(gzip.compress(data), "gzip", 999)


@pytest.mark.parametrize(
    ("raw", "encoding", "reason"),
    [
        (b'{"a": 1}', "gzip", "bad_gzip"),
        (gzip.compress(b'{"a": 1}')[:-6], "gzip", "bad_gzip"),
        (b'{"a": 1}', "br", "unsupported_encoding"),
        (b"x" * 101, None, "request_too_large"),
        (b"x" * 101, "identity", "request_too_large"),
    ],
)
def test_body_refusals(raw: bytes, encoding: str | None, reason: str) -> None:
    with pytest.raises(Rejected) as caught:
        decode_body(raw, encoding, 100)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"{not json", "malformed_json"), (b"\xff\xfe", "malformed_json"), (b"[]", "not_an_object")],
)
def test_json_refusals(body: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as caught:
        parse_object(body)
    assert caught.value.reason == reason and caught.value.status == 400


def test_basic_username() -> None:
    assert basic_username(basic("key-1")) == "key-1"
    assert basic_username(basic("key:with", "colon")) == "key"
    assert basic_username("basic " + b64encode(b"k:").decode()) == "k"
    for bad in ("Bearer abc", "Basic !!!", "Basic " + b64encode(b"\xff").decode(), ""):
        assert basic_username(bad) is None


def test_write_keys() -> None:
    keys = WriteKeys(["k1", "k2"])
    keys.check(basic("k2"), None)
    keys.check(None, "k1")
    refusals = [
        ((basic("nope"), None), "invalid_write_key"),
        ((basic("nope"), "k1"), "invalid_write_key"),  # the header decides when present
        (("Bearer token", None), "invalid_write_key"),
        ((None, None), "missing_write_key"),
        ((None, 12), "missing_write_key"),
        ((None, "k1 "), "invalid_write_key"),
    ]
    for (header, body_key), reason in refusals:
        with pytest.raises(Rejected) as caught:
            keys.check(header, body_key)
        assert caught.value.reason == reason and caught.value.status == 401
    with pytest.raises(ValueError):
        WriteKeys([])


def test_rejections_never_echo_the_key() -> None:
    with pytest.raises(Rejected) as caught:
        WriteKeys(["right"]).check(basic("wrong-secret"), None)
    assert "wrong-secret" not in str(caught.value)
