"""Namespaces: how commands name lead states, and the key patterns that keep them apart."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamscore.errors import StreamscoreError
from streamscore.store.keys import KeySpace
from streamscore.store.namespaces import (
    Namespace,
    lead_pattern,
    parse_namespace,
    replay_namespace,
)


def test_specs_name_live_shadow_and_replay_state() -> None:
    assert parse_namespace("live", "ss") == Namespace("live", "live", "ss")
    assert parse_namespace("shadow:cand", "ss") == Namespace("shadow", "cand", "ss:m:cand")
    assert parse_namespace("replay:q4-try_2", "ss") == Namespace(
        "replay", "q4-try_2", "ss:r:q4-try_2"
    )
    assert parse_namespace("replay:x", "ss").spec == "replay:x"


@pytest.mark.parametrize(
    "spec", ["", "replay:", "replay:Big", "replay:a:b", "shadow:", "model:x", "x.jsonl"]
)
def test_anything_else_is_refused_with_the_forms_that_work(spec: str) -> None:
    with pytest.raises(StreamscoreError) as raised:
        parse_namespace(spec, "ss")
    assert "replay" in str(raised.value)


lead_ids = st.text(min_size=1, max_size=12)
# Prefixes with glob metacharacters: the patterns must escape them.
prefixes = st.sampled_from(["ss", "a*b", "pre[1]", "x?y", "back\\slash"])


@given(prefixes, lead_ids, st.integers(1, 16))
def test_a_namespace_pattern_matches_its_own_leads_and_no_other_namespace(
    prefix: str, lead: str, groups: int
) -> None:
    live = parse_namespace("live", prefix)
    replay = replay_namespace(prefix, "r1")
    shadow = parse_namespace("shadow:cand", prefix)
    spaces = (live, replay, shadow)
    for ns in spaces:
        keys = KeySpace(ns.prefix, groups)
        key = keys.lead(keys.lead_ref(lead))
        for other in spaces:
            assert _redis_match(lead_pattern(other), key) is (other == ns), (other, key)


def _redis_match(pattern: str, text: str) -> bool:
    """Redis glob semantics for the subset used here: *, ?, [...] and backslash escapes."""
    import re

    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            j = pattern.index("]", i)
            out.append("[" + pattern[i + 1 : j] + "]")
            i = j + 1
            continue
        else:
            out.append(re.escape(ch))
        i += 1
    return re.fullmatch("".join(out), text, re.S) is not None
