"""The wire formats between Python and the Lua scripts: batch columns and stored lead state."""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
import orjson
from hypothesis import given
from hypothesis import strategies as st

from streamscore.scoring.engine import AttributeUpdate, Decision
from streamscore.store import wire
from streamscore.store.keys import KeySpace
from streamscore.store.wire import ScoredEvent, decode_lead_state, encode_batches


def scored(lead: str, event: str, offset: int, decision: Decision) -> ScoredEvent:
    return ScoredEvent(lead, event, 1_700_000_000_000 + offset, "pv", offset % 2, offset, decision)


def test_batches_are_split_by_group_and_laid_out_by_column() -> None:
    keys = KeySpace("t", groups=2)
    plain = Decision(((0, 1.0), (3, 2.5)), (), 0)
    with_attr = Decision((), (AttributeUpdate(1, "VP", 10.0, 4, False, (("vp", 10.0),)),), 1)
    events = [
        scored("a", "e1", 1, plain),
        scored("b", "e2", 2, with_attr),
        scored("a", "e3", 3, with_attr),
    ]
    batches = encode_batches(events, keys)
    assert sum(len(b.events) for b in batches) == 3
    for batch in batches:
        doc = msgpack.unpackb(batch.payload)
        n = len(batch.events)
        for column in ("slot", "id", "t", "tp", "off", "flag", "aw"):
            assert len(doc[column]) == n
        assert doc["id"] == [e.event_id for e in batch.events]
        assert len(batch.keys) == 3 + 2 * len(doc["leads"])
        for i, ev in enumerate(batch.events):
            assert doc["leads"][doc["slot"][i]] == ev.lead_id
            assert doc["aw"][i] == [x for award in ev.decision.awards for x in award]
            assert doc["tps"][doc["tp"][i]] == f"{ev.topic}:{ev.partition}"
        with_attributes = {i for i, _ in doc["at"]}
        assert with_attributes == {i for i, e in enumerate(batch.events) if e.decision.attributes}


def test_lead_state_is_decoded_to_text_fields() -> None:
    raw = msgpack.packb(
        {
            "id": "lead-1",
            "e": 12.5,
            "lt": 1_700_000_000_123,
            "r:page_view": 0.1,
            "p:title": [1_700_000_000_000, "VP", 10, 4, 0, [["vp", 10]]],
        }
    )
    fields = decode_lead_state(raw)
    assert fields["id"] == "lead-1"
    assert float(fields["e"]) == 12.5
    assert int(fields["lt"]) == 1_700_000_000_123
    assert float(fields["r:page_view"]) == 0.1
    assert orjson.loads(fields["p:title"])[5] == [["vp", 10]]
    assert decode_lead_state(None) == {}


def test_packed_profile_is_spread_into_attribute_fields() -> None:
    profile = {"title": [1_700_000_000_000, "VP", 10, 4, 0, [["vp", 10]]], "size": [1, 900.5]}
    # As lead.lua stores it: the profile's MessagePack (not valid UTF-8) as a string field.
    packed = msgpack.packb(profile, use_bin_type=False)
    assert b"\xcb" in packed  # a float64 marker: these bytes do not decode as UTF-8
    fields = decode_lead_state(msgpack.packb({"id": "x", "P": packed}, use_bin_type=False))
    assert "P" not in fields
    assert orjson.loads(fields["p:title"]) == profile["title"]
    assert orjson.loads(fields["p:size"]) == [1, 900.5]


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_survive_the_round_trip_exactly(value: float) -> None:
    fields = decode_lead_state(msgpack.packb({"e": value}))
    assert float(fields["e"]) == value


def test_defaults_match_the_script() -> None:
    source = (Path(wire.__file__).parent / "scripts" / "lead.lua").read_text()
    line = next(x for x in source.splitlines() if x.startswith("local DEFAULTS = {"))
    pairs = re.findall(r"(\w+) = (-?\d+)", line.split("{", 1)[1])
    assert {name: int(value) for name, value in pairs} == wire.LEAD_DEFAULTS


def test_absent_core_fields_read_as_their_defaults() -> None:
    fields = decode_lead_state(msgpack.packb({"id": "lead-1", "lt": 5}))
    assert fields["arm"] == "1"
    assert float(fields["pen"]) == 0.0
    assert fields["lt"] == "5"
