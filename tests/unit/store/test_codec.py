"""store/codec.py: exact round trips, deterministic bytes, defaults left out, Lua's format read."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamscore.scoring import reference, state
from streamscore.scoring.engine import DISQUALIFY, NO_FLAG, REQUALIFY, decide
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import CompiledRules
from streamscore.scoring.state import CAP_WINDOWS_KEPT, LeadState, ProfileRecord
from streamscore.store.codec import FORMAT, StateCodecError, decode_lead, encode_lead
from tests.state_support import (
    DEDUP_WINDOWS,
    HOUR,
    MIN,
    RULE_VARIANTS,
    RULES_1H,
    STEPS,
    T0,
    VIEW,
    Ev,
    Step,
    timeline,
)

#: Stored values that would be a field's default, by key (a missing key: the default is None).
DEFAULTS: dict[str, Any] = {
    "e": 0, "pen": 0, "tier": 0, "arm": 1, "n": 0, "dq": NO_FLAG, "fit": 0, "fdq": 0,
    "bant": 0, "pd": 0, "r": {}, "np": {}, "c": {}, "P": {}, "s": {},
}  # fmt: skip


def unpack(raw: bytes) -> dict[Any, Any]:
    m: dict[Any, Any] = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    return m


def states_after(steps: list[Step], rules: CompiledRules, dedup_ms: int) -> list[LeadState]:
    leads: dict[str, LeadState] = {}
    for lead, event_id, t, ev in timeline(steps):
        s = leads.setdefault(lead, state.new_lead(lead))
        state.apply_event(s, rules, event_id, t, decide(ev, rules), dedup_ms, [])
    return list(leads.values())


# Arbitrary states, not only reachable ones: every field at and away from its default.
TIMES = st.integers(0, 2**53)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
RULE_IDS = st.text("abcdefghij_", min_size=1, max_size=8)
TEXT = st.text(max_size=12)
RECORDS = st.builds(
    ProfileRecord,
    TIMES,
    TEXT,
    FLOATS,
    st.integers(0, 15),
    st.booleans(),
    st.lists(st.tuples(RULE_IDS, FLOATS), max_size=3).map(tuple),
)
EXTRA_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | FLOATS | TEXT | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def some(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """None or a non-empty table: the state code never leaves an empty one."""
    return st.none() | strategy


ARBITRARY = st.builds(
    LeadState,
    lead_id=TEXT,
    anchor_ms=st.none() | TIMES,
    positive=FLOATS,
    negative=FLOATS,
    points_anchor_ms=st.none() | TIMES,
    last_ms=st.none() | TIMES,
    tier=st.integers(0, 5),
    armed=st.booleans(),
    seq=st.integers(0, 2**40),
    flag=st.sampled_from([NO_FLAG, DISQUALIFY, REQUALIFY]),
    flag_ms=st.none() | TIMES,
    fit=FLOATS,
    fit_disqualify=st.booleans(),
    bant=st.integers(0, 15),
    rules_version=st.none() | TEXT,
    penalties_decay=st.booleans(),
    points=st.dictionaries(RULE_IDS, FLOATS, max_size=4),
    penalties=some(st.dictionaries(RULE_IDS, FLOATS, min_size=1, max_size=3)),
    caps=some(
        st.dictionaries(
            RULE_IDS,
            st.dictionaries(st.integers(0, 2**40), FLOATS, min_size=1, max_size=9),
            min_size=1,
            max_size=2,
        )
    ),
    profile=some(st.dictionaries(TEXT, RECORDS, min_size=1, max_size=3)),
    seen=some(st.dictionaries(st.integers(0, 2**64 - 1), TIMES, min_size=1, max_size=5)),
    partition=st.none() | st.integers(0, 10_000),
    extra=some(st.dictionaries(st.sampled_from(["o", "links", "zz"]), EXTRA_VALUES, min_size=1)),
)


# ------------------------------------------------------------------ round trips


@settings(max_examples=150, deadline=None)
@given(
    steps=STEPS,
    rules=st.sampled_from(RULE_VARIANTS),
    dedup_ms=DEDUP_WINDOWS,
    partition=st.none() | st.integers(0, 63),
)
def test_states_from_event_streams_round_trip(
    steps: list[Step], rules: CompiledRules, dedup_ms: int, partition: int | None
) -> None:
    for s in states_after(steps, rules, dedup_ms):
        s.partition = partition
        raw = encode_lead(s)
        assert decode_lead(raw) == s
        assert encode_lead(decode_lead(raw)) == raw


@settings(max_examples=300, deadline=None)
@given(ARBITRARY)
def test_any_state_round_trips_exactly(s: LeadState) -> None:
    raw = encode_lead(s)
    back = decode_lead(raw)
    assert back == s
    assert encode_lead(back) == raw


@settings(max_examples=150, deadline=None)
@given(ARBITRARY)
def test_equal_states_give_equal_bytes(s: LeadState) -> None:
    """Tables built in another order, integral floats as ints, -0.0 for 0.0: the same bytes."""

    def twist(x: float) -> float:
        if x == 0:
            return -0.0
        return int(x) if x == int(x) and abs(x) < 2**53 else x

    other = state.clone(s)
    other.positive, other.negative, other.fit = twist(s.positive), twist(s.negative), twist(s.fit)
    other.points = {rule: twist(v) for rule, v in reversed(s.points.items())}
    if s.penalties:
        other.penalties = {rule: twist(v) for rule, v in reversed(s.penalties.items())}
    if s.caps:
        other.caps = {
            rule: {w: twist(used) for w, used in reversed(ws.items())}
            for rule, ws in reversed(s.caps.items())
        }
    if s.profile:
        other.profile = dict(reversed(s.profile.items()))
    if s.seen:
        other.seen = dict(reversed(s.seen.items()))
    assert other == s
    assert encode_lead(other) == encode_lead(s)


@settings(max_examples=150, deadline=None)
@given(ARBITRARY)
def test_fields_at_their_defaults_are_left_out(s: LeadState) -> None:
    m = unpack(encode_lead(s))
    for key, value in m.items():
        if key in ("v", "id") or key in (s.extra or {}):
            continue
        if key == "ra":
            assert value != m.get("a"), "the points anchor is stored only when it differs"
        else:
            assert value is not None and value != DEFAULTS.get(key), (key, value)
    assert unpack(encode_lead(state.new_lead("x"))) == {"v": FORMAT, "id": "x"}


def test_unknown_keys_survive_a_decode_and_encode() -> None:
    s = state.new_lead("x")
    state.apply_event(s, RULES_1H, "e", T0, decide(VIEW, RULES_1H), HOUR, [])
    m = unpack(encode_lead(s))
    m["o"] = {"stage": "sql", "at": T0}
    m["links"] = ["y", "z"]
    back = decode_lead(msgpack.packb(m, use_bin_type=True))
    assert back.extra == {"o": {"stage": "sql", "at": T0}, "links": ["y", "z"]}
    back.extra = None
    assert back == s
    assert unpack(encode_lead(decode_lead(msgpack.packb(m, use_bin_type=True)))) == m
    # Text that is not valid UTF-8 (Lua strings are bytes) goes back byte for byte.
    odd = msgpack.packb({"v": FORMAT, "id": "x", "zz": b"\xff\xfeok"}, use_bin_type=False)
    assert encode_lead(decode_lead(odd)) == odd


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"\xc1", "not MessagePack"),
        (msgpack.packb([1, 2]), "not a map"),
        (msgpack.packb({"v": FORMAT + 1, "id": "x"}), "format 3"),
        (msgpack.packb({"v": FORMAT, "id": "x", "tier": "hot"}), "tier must be an integer"),
        (msgpack.packb({"v": FORMAT, "id": "x", "tier": True}), "tier must be an integer"),
        (msgpack.packb({"v": FORMAT, "id": "x", "lt": float("inf")}), "lt must be an integer"),
        (msgpack.packb({"v": FORMAT, "id": "x", "e": "3"}), "e must be a number"),
        (msgpack.packb({"v": FORMAT, "id": "x", "dq": 7}), "dq must be"),
        (msgpack.packb({"v": FORMAT, "id": "x", "arm": 2}), "arm must be 0 or 1"),
        (msgpack.packb({"v": FORMAT, "id": "x", "P": {"t": [1, 2]}}), "P.t must be"),
        (msgpack.packb({"v": FORMAT}), "no lead id"),
        (msgpack.packb({"id": "x", "lt": T0, "zz": 1}), "unknown field 'zz'"),
    ],
)
def test_bad_bytes_are_rejected_loudly(raw: bytes, needle: str) -> None:
    with pytest.raises(StateCodecError, match=needle):
        decode_lead(raw)


def test_an_extra_field_cannot_shadow_a_known_one() -> None:
    s = state.new_lead("x")
    s.extra = {"lt": 5}
    with pytest.raises(StateCodecError, match="shadows"):
        encode_lead(s)


def test_a_missing_lead_id_comes_from_the_hint() -> None:
    assert decode_lead(msgpack.packb({"v": FORMAT}), "hinted").lead_id == "hinted"
    assert decode_lead(msgpack.packb({"v": FORMAT, "id": "own"}), "hinted").lead_id == "own"


# ------------------------------------------------------------------ the Lua format


def test_a_hand_built_lua_state_decodes_to_the_reference_scores() -> None:
    """The documented Lua shape, for: a capped view, an unsubscribe, a VP identify, a bot."""
    events = [
        ("v1", T0, VIEW),
        ("u1", T0 + HOUR, Ev("unsubscribe")),
        ("id1", T0 + HOUR, Ev("identify", traits={"title": "VP Sales", "size": 120})),
        ("b1", T0 + 2 * HOUR, Ev("page_view", {"path": "/x"}, {"user_agent": "googlebot"})),
    ]
    ref = reference.LeadState("old")
    for event_id, t, ev in events:
        reference.apply_event(ref, RULES_1H, event_id, t, decide(ev, RULES_1H), 0)
    window = T0 // (30 * MIN)
    view_norm = 3 + 3 * 2.0**2  # the view at T0 and the bot's at T0 + 2 h, normalised to T0
    profile = {
        "title": [T0 + HOUR, "vp sales", 20, 2, 0, [["exec", 20]]],
        # cmsgpack packs an empty Lua table as an empty map or array: both must read as none.
        "size": [T0 + HOUR, "120.0", 0, 0, 0, {}],
    }
    legacy = {
        "id": "old", "a": T0, "e": view_norm, "pen": -15, "lt": T0 + 2 * HOUR, "tier": 0,
        "n": ref.seq, "dq": DISQUALIFY, "dqt": T0 + 2 * HOUR, "fit": 20, "bant": 2,
        "ver": RULES_1H.version, "r:view": view_norm, "n:unsub": -15,
        "c:view": {f"{window:.17g}": 3, f"{window + 4:.17g}": 3}, "due": T0,
    }  # fmt: skip
    # P is a Lua string holding the packed profile; Lua has no bin type, so bytes go as str.
    legacy["P"] = msgpack.packb(profile, use_bin_type=False)
    raw = msgpack.packb(legacy, use_bin_type=False)
    s = decode_lead(raw)
    assert s.lead_id == "old" and s.rules_version == RULES_1H.version
    assert s.profile is not None and s.profile["size"].reasons == ()
    assert s.caps == {"view": {window: 3.0, window + 4: 3.0}}
    t = T0 + 3 * HOUR
    assert math.isclose(state.score_at(s, RULES_1H, t), reference.score_at(ref, RULES_1H, t))
    assert state.disqualified(s) == reference.disqualified(ref) is True
    assert (s.tier, s.armed, s.seq, s.last_ms) == (ref.tier, ref.armed, ref.seq, ref.last_ms)
    assert (s.fit, s.bant) == (reference.fit_points(ref), reference.bant_mask(ref))
    got = dict(state.contributions_at(s, RULES_1H, t))
    assert got["exec"] == 20 and got["unsub"] == -15
    assert math.isclose(got["view"], 3 * 2.0**-3 + 3 * 2.0**-1)
    # After decoding, the lead goes on like any other; a requalifying trial at t agrees too.
    trial = decide(Ev("trial_signup"), RULES_1H)
    out: list[Output] = []
    assert state.apply_event(s, RULES_1H, "t1", t, trial, 0, out)
    expected = reference.apply_event(ref, RULES_1H, "t1", t, trial, 0)
    assert [(o.kind, o.seq, o.new_tier) for o in out] == [
        (o.kind, o.seq, o.new_tier) for o in expected or []
    ]
    assert math.isclose(state.score_at(s, RULES_1H, t), reference.score_at(ref, RULES_1H, t))


def test_older_lua_states_with_one_field_per_attribute_decode() -> None:
    """Before P, lead.lua kept p:<attr> fields; where both exist the p: field wins, as in Lua."""
    title = [T0 - 1000, "vp sales", 20, 2, 0, [["exec", 20]]]
    stale = [T0 - 5000, "intern", -10, 0, 0, [["intern", -10]]]
    size = [T0 - 2000, "900.0", 15, 1, 0, [["big", 15]]]
    legacy = {
        "id": "old", "a": T0 - 1000, "lt": T0 - 1000, "fit": 35, "bant": 3,
        "P": msgpack.packb({"title": stale, "size": size}, use_bin_type=False),
        "p:title": title,
    }  # fmt: skip
    s = decode_lead(msgpack.packb(legacy, use_bin_type=False))
    assert s.profile is not None
    assert s.profile["title"] == ProfileRecord(
        T0 - 1000, "vp sales", 20.0, 2, False, (("exec", 20.0),)
    )
    assert s.profile["size"].reasons == (("big", 15.0),)
    assert dict(state.contributions_at(s, RULES_1H, T0)) == {"exec": 20.0, "big": 15.0}


def test_lua_cap_tables_are_cut_to_the_kept_windows() -> None:
    newest = T0 // (30 * MIN)
    windows = {f"{w:.17g}": 3 for w in range(newest - 12, newest + 1)}
    s = decode_lead(msgpack.packb({"id": "x", "a": T0, "lt": T0, "c:view": windows}))
    assert s.caps is not None
    assert sorted(s.caps["view"]) == list(range(newest - CAP_WINDOWS_KEPT, newest + 1))
