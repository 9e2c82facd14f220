"""format_output: the engine's outputs, through the outbox, become schema-valid messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from streamscore.events.outputs import format_output, output_id
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import BANT_CRITERIA, GRADES
from streamscore.store.outbox import ScoredOutput, decode_outputs, encode_outputs
from tests.conftest import REPO_ROOT

SCHEMAS = {
    kind: Draft202012Validator(orjson.loads((REPO_ROOT / "schemas" / name).read_bytes()))
    for kind, name in (("handoff", "handoff.v1.json"), ("tier_change", "tier-change.v1.json"))
}
TIERS = ["cold", "warm", "hot", "on-fire"]
TIER_RANK = {name: i for i, name in enumerate(TIERS)}
YEAR_2200_MS = 7_258_118_400_000

TEXT = st.characters(blacklist_categories=["Cs"])  # what a JSON document can carry
LEAD_IDS = st.text(TEXT, min_size=1, max_size=256)
NUMBERS = st.floats(-1e9, 1e9, allow_nan=False)


@st.composite
def rows(draw: st.DrawFn, kind: str | None = None) -> ScoredOutput:
    """An output of the engine with the time it was committed."""
    kind = kind or draw(st.sampled_from(["handoff", "tier_change"]))
    old, new = draw(st.lists(st.sampled_from(TIERS), min_size=2, max_size=2, unique=True))
    if kind == "handoff" and draw(st.booleans()):
        old = new  # a lead already in the handoff tier that has just met the gates
    reasons = tuple(
        draw(
            st.lists(
                st.tuples(st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True), NUMBERS),
                max_size=3,
            )
        )
    )
    cause = "decay" if kind == "tier_change" and draw(st.booleans()) else "event"
    event_id = None if cause == "decay" else draw(st.text(TEXT, min_size=1, max_size=128))
    output = Output(
        kind,  # type: ignore[arg-type]
        draw(LEAD_IDS),
        draw(st.integers(1, 10**9)),
        old,
        new,
        draw(NUMBERS),
        draw(NUMBERS),
        draw(NUMBERS),
        draw(st.integers(1, 4)),
        draw(st.integers(0, 15)),
        reasons,
        event_id,
        draw(st.integers(0, YEAR_2200_MS)),
        cause,  # type: ignore[arg-type]
        draw(st.from_regex(r"[A-Za-z0-9_.:+-]{1,64}", fullmatch=True)),
    )
    return ScoredOutput(output, draw(st.integers(0, YEAR_2200_MS)))


def ms_of(stamp: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 stamp, in exact integer arithmetic."""
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


@settings(max_examples=50, deadline=None)
@given(row=rows())
def test_rows_become_schema_valid_messages(row: ScoredOutput) -> None:
    (decoded,) = decode_outputs(encode_outputs([row.output], row.scored_at))
    assert decoded == row  # the outbox keeps every value
    out = decoded.output
    msg = format_output(decoded, TIER_RANK)
    body = orjson.loads(msg.value)
    errors = [e.message for e in SCHEMAS[out.kind].iter_errors(body)]
    assert not errors, (errors, body)
    assert msg.kind == out.kind and msg.key == out.lead_id.encode()
    assert msg.new_tier == out.new_tier
    assert msg.direction == ("up" if TIER_RANK[out.new_tier] >= TIER_RANK[out.old_tier] else "down")
    assert (body["lead_id"], body["old_tier"], body["new_tier"]) == (
        out.lead_id,
        out.old_tier,
        out.new_tier,
    )
    assert body["score"] == round(out.score, 6)
    assert body["triggering_event_id"] == out.event_id
    assert body["rules_version"] == out.rules_version
    assert ms_of(body["event_time"]) == out.time_ms
    assert ms_of(body["scored_at"]) == decoded.scored_at
    if out.kind == "handoff":
        bant = out.bant_mask
        assert body["handoff_id"] == output_id(out.lead_id, out.seq)
        assert body["grade"] == GRADES[out.grade - 1]
        assert [body["bant"][c] for c in BANT_CRITERIA] == [bool(bant >> i & 1) for i in range(4)]
        assert body["bant_met"] == bin(bant).count("1")
        assert body["engagement"] == round(out.engagement, 6)
        assert body["fit"] == round(out.fit, 6)
        assert [(r["rule"], r["points"]) for r in body["reasons"]] == [
            (r, round(p, 6)) for r, p in out.reasons
        ]
    else:
        assert body["change_id"] == output_id(out.lead_id, out.seq)
        assert body["direction"] == msg.direction and body["cause"] == out.cause


@settings(max_examples=25, deadline=None)
@given(row=rows())
def test_the_same_row_always_gives_the_same_message(row: ScoredOutput) -> None:
    def message(r: ScoredOutput) -> bytes:
        (decoded,) = decode_outputs(encode_outputs([r.output], r.scored_at))
        return format_output(decoded, TIER_RANK).value

    assert message(row) == message(ScoredOutput(*row))


@settings(max_examples=100, deadline=None)
@given(a=st.tuples(LEAD_IDS, st.integers(1, 10**6)), b=st.tuples(LEAD_IDS, st.integers(1, 10**6)))
def test_output_ids_are_deterministic_and_distinct(a: tuple[str, int], b: tuple[str, int]) -> None:
    assert output_id(*a) == output_id(*a)
    assume(a != b)
    assert output_id(*a) != output_id(*b)


def test_ids_differ_for_neighbouring_leads_and_seqs() -> None:
    ids = {output_id(lead, seq) for lead in ("a", "a1", "1", "a\x001") for seq in (1, 2, 11, 12)}
    assert len(ids) == 16
