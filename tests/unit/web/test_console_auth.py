"""The console's session cookies and redirect targets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamscore.web.console.auth import (
    bearer,
    local_path,
    session_valid,
    session_value,
    token_matches,
)

TOKEN = "a-console-token-of-32-characters"
NOW = 1_800_000_000


def test_a_session_is_valid_until_it_expires_and_only_for_its_token() -> None:
    value = session_value(TOKEN, NOW + 60)
    assert session_valid(TOKEN, value, NOW)
    assert session_valid(TOKEN, value, NOW + 59.9)
    assert not session_valid(TOKEN, value, NOW + 60)
    # A new token ends every session made with the old one.
    assert not session_valid(TOKEN + "x", value, NOW)


@given(st.text(max_size=80))
def test_no_made_up_value_is_a_session(value: str) -> None:
    assert not session_valid(TOKEN, value, NOW)


def test_a_session_cannot_be_extended_or_forged_by_editing_it() -> None:
    value = session_value(TOKEN, NOW + 60)
    expires, mac = value.split(".")
    assert not session_valid(TOKEN, f"{int(expires) + 3600}.{mac}", NOW)
    assert not session_valid(TOKEN, f"{expires}.{mac[:-1]}0", NOW) or mac.endswith("0")
    assert not session_valid(TOKEN, f"{expires}.", NOW)
    assert not session_valid(TOKEN, None, NOW)


def test_tokens_and_bearer_headers() -> None:
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches(TOKEN, TOKEN[:-1])
    assert not token_matches(TOKEN, None)
    assert bearer(f"Bearer {TOKEN}") == TOKEN
    assert bearer(f"bearer  {TOKEN} ") == TOKEN
    assert bearer(f"Basic {TOKEN}") is None
    assert bearer(None) is None


def test_after_login_only_paths_of_this_site() -> None:
    assert local_path("/lead?id=%3Cx%3E") == "/lead?id=%3Cx%3E"
    assert local_path("/kpis") == "/kpis"
    for outside in (
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/\tx",
        "",
        None,
    ):
        assert local_path(outside) == "/", outside
