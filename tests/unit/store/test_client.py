"""store.client, pure parts: packed calls against redis-py's encoder, slot check, script lines."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from redis.asyncio.connection import Connection
from redis.crc import key_slot

from streamscore.store.client import (
    CrossSlotKeys,
    LuaScript,
    _frame,
    pack_script_call,
)

# Small alphabets with braces, so that tags, empty tags and unclosed braces are common.
KEY_TEXT = st.text(alphabet="ab{}:é", min_size=0, max_size=8)
KEYS = st.lists(st.one_of(KEY_TEXT, KEY_TEXT.map(str.encode)), min_size=1, max_size=6)
ARGS = st.lists(
    st.one_of(st.text(max_size=6), st.binary(max_size=6), st.integers(-(2**63), 2**63 - 1)),
    max_size=4,
)
SCRIPT = LuaScript("probe.lua", "return 1")


def raw(key: str | bytes) -> bytes:
    return key if isinstance(key, bytes) else key.encode()


@given(keys=KEYS, args=ARGS, tail=ARGS)
def test_a_packed_call_is_the_command_redis_py_would_send(
    keys: list[str | bytes], args: list[str | bytes | int], tail: list[str | bytes | int]
) -> None:
    packed = pack_script_call(SCRIPT, keys, args, check_slot=False)
    expected = Connection().pack_command("EVALSHA", SCRIPT.sha1, len(keys), *keys, *args, *tail)
    assert b"".join(_frame(packed, tuple(tail))) == b"".join(expected)
    assert packed.slot == key_slot(raw(keys[0]))


@given(keys=KEYS)
def test_the_slot_check_refuses_exactly_the_calls_that_span_slots(keys: list[str | bytes]) -> None:
    slots = {key_slot(raw(k)) for k in keys}
    if len(slots) == 1:
        assert pack_script_call(SCRIPT, keys, []).slot == slots.pop()
    else:
        with pytest.raises(CrossSlotKeys):
            pack_script_call(SCRIPT, keys, [])


@given(
    tag=st.text(alphabet="gx0123456789", min_size=1, max_size=4),
    suffixes=st.lists(st.text(alphabet="ab:{}", max_size=6), min_size=2, max_size=6),
)
def test_keys_sharing_a_tagged_prefix_pass_the_fast_check(tag: str, suffixes: list[str]) -> None:
    keys = [f"ss:v1:{{{tag}}}:{s}" for s in suffixes]
    assert pack_script_call(SCRIPT, keys, []).slot == key_slot(tag.encode())


FILES = st.lists(
    st.tuples(
        st.text(alphabet="abc", min_size=1, max_size=4).map(lambda n: n + ".lua"),
        st.lists(st.text(alphabet="xyz =", max_size=5), min_size=0, max_size=6),
        st.booleans(),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200)
@given(files=FILES)
def test_every_line_of_a_joined_script_is_located_in_its_own_file(
    files: list[tuple[str, list[str], bool]],
) -> None:
    named = [(f"{i}-{name}", "\n".join(lines) + ("\n" if nl else "")) for i, (name, lines, nl) in
             enumerate(files)]  # fmt: skip
    script = LuaScript.join("main.lua", named)
    texts = dict(named)
    for number, line in enumerate(script.source.split("\n")[:-1], start=1):
        file_name, file_line = script.locate(number)
        assert texts[file_name].split("\n")[file_line - 1] == line


def test_a_script_s_sha1_is_that_of_its_source_and_one_file_locates_to_itself() -> None:
    script = LuaScript("x.lua", "local a = 1\nreturn a\n")
    assert script.locate(2) == ("x.lua", 2)
    assert script.sha1 == LuaScript("y.lua", script.source).sha1 != LuaScript("x.lua", "").sha1
