"""parse_outcome: native and Segment forms of every type, every reject reason it can give."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamscore.errors import InvalidEvent
from streamscore.events import REJECT_REASONS, Limits, dead_letter_record, load_schema
from streamscore.outcomes.events import (
    CHANNELS,
    MAX_AMOUNT,
    SCHEMA_FILE,
    SEGMENT_OUTCOME_ALIASES,
    Outcome,
    OutcomeType,
    compile_outcome_schema,
    parse_outcome,
)

NOW_MS = 1_772_539_200_000  # 2026-03-03T12:00:00Z
LIMITS = Limits()
EXAMPLES = Path(__file__).resolve().parents[3] / "schemas" / "examples" / "outcomes.v1"


def native(type_: str = "won", **fields: Any) -> dict[str, Any]:
    """A native outcome as a CRM connector sends it."""
    doc: dict[str, Any] = {
        "outcome_id": "sf-hist-1",
        "lead_id": "lead-42",
        "type": type_,
        "time": "2026-03-02T15:04:05.250Z",
    }
    if type_ == "first_touch":
        doc["channel"] = "call"
    doc.update(fields)
    return doc


def segment(event: str = "Deal Won", **fields: Any) -> dict[str, Any]:
    """A Segment track call for an outcome."""
    doc: dict[str, Any] = {
        "messageId": "ajs-1",
        "type": "track",
        "event": event,
        "userId": "lead-42",
        "timestamp": "2026-03-02T15:04:05.250Z",
    }
    if SEGMENT_OUTCOME_ALIASES.get(event) is OutcomeType.FIRST_TOUCH:
        doc["properties"] = {"channel": "email"}
    doc.update(fields)
    return doc


def parse(doc: dict[str, Any] | bytes | None) -> Outcome:
    raw = doc if doc is None or isinstance(doc, bytes) else orjson.dumps(doc)
    return parse_outcome(raw, NOW_MS, LIMITS)


def reject(doc: dict[str, Any] | bytes | None) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse(doc)
    assert info.value.reason in REJECT_REASONS
    return info.value


def test_native_won_with_every_field() -> None:
    outcome = parse(
        native(
            amount=48000,
            currency="EUR",
            rep_id="rep-7",
            reason="signed",
            source="salesforce",
            properties={"opportunity_id": "006XX"},
            extra_top_level="ignored",
        )
    )
    assert outcome == Outcome(
        "sf-hist-1",
        "lead-42",
        OutcomeType.WON,
        1_772_463_845_250,
        48000.0,
        "EUR",
        "rep-7",
        "signed",
        None,
        "salesforce",
    )
    assert isinstance(outcome.amount, float)


@pytest.mark.parametrize("outcome_type", list(OutcomeType))
def test_every_type_native_and_segment(outcome_type: OutcomeType) -> None:
    names = [n for n, t in SEGMENT_OUTCOME_ALIASES.items() if t is outcome_type]
    assert len(names) == 2  # a Segment name and the native one
    assert parse(native(outcome_type.value)).type is outcome_type
    for name in names:
        outcome = parse(segment(name))
        assert outcome.type is outcome_type
        assert outcome.outcome_id == "ajs-1"
        assert outcome.lead_id == "lead-42"


def test_segment_fields_come_from_properties_and_lead_from_anonymous_id() -> None:
    doc = segment(
        "Lead Contacted",
        userId=None,
        anonymousId="anon-9",
        originalTimestamp=1_772_463_845_000,
        properties={"channel": "meeting", "rep_id": "r1", "source": "hubspot"},
    )
    del doc["timestamp"]
    outcome = parse(doc)
    assert (outcome.lead_id, outcome.channel, outcome.rep_id, outcome.source) == (
        "anon-9",
        "meeting",
        "r1",
        "hubspot",
    )
    assert outcome.time_ms == 1_772_463_845_000


def test_optional_fields_stay_none() -> None:
    outcome = parse(native("sales_rejected"))
    assert (outcome.amount, outcome.reason, outcome.currency, outcome.channel) == (None,) * 4


@pytest.mark.parametrize("amount", [0, 0.01, MAX_AMOUNT, 12500.5])
def test_amount_bounds_accepted(amount: float) -> None:
    assert parse(native(amount=amount)).amount == float(amount)


REJECTS: list[tuple[str, dict[str, Any] | bytes | None]] = [
    ("too_large", orjson.dumps(native(properties={"blob": "x" * 70_000}))),
    ("empty", None),
    ("empty", b" \n"),
    ("not_utf8", b'{"lead_id": "Zo\xeb"}'),
    ("malformed_json", b'{"outcome_id": "x", "amount": Infinity}'),
    ("malformed_json", b'{"amount": 1e400}'),  # orjson refuses an infinite number
    ("not_an_object", b"[]"),
    ("schema", {k: v for k, v in native().items() if k != "outcome_id"}),
    ("schema", native("first_touch", channel=None) | {"channel": "carrier pigeon"}),
    ("schema", {k: v for k, v in native("first_touch").items() if k != "channel"}),
    ("schema", segment("Lead Contacted", properties={"rep_id": "r"})),
    ("schema", native(currency="eur")),
    ("schema", native(reason=7)),
    ("unknown_type", native("closed_won")),
    ("unknown_type", segment("Order Completed")),
    ("unknown_type", segment(type="screen")),
    ("wrong_topic", native("page_view")),
    ("wrong_topic", segment("Email Opened")),
    ("wrong_topic", segment(type="identify")),
    ("bad_lead_id", native(lead_id="  ")),
    ("bad_lead_id", segment(userId="lead\n")),
    ("bad_time", native(time="2026-02-30T10:00:00Z")),  # right shape, no such day
    ("bad_time", native(time="2026-03-02T15:04:05")),
    ("bad_time", native(time=1_772_463_845_000.5)),
    ("time_out_of_range", native(time="2026-03-03T13:00:00Z")),  # an hour ahead of now
    ("time_out_of_range", native(time=1_772_463_845)),  # epoch seconds, not ms
    ("time_out_of_range", native(time="2024-01-01T00:00:00Z")),  # older than 400 days
    ("bad_amount", native(amount=-500)),
    ("bad_amount", native(amount="48,000.00")),
    ("bad_amount", native(amount=True)),
    ("bad_amount", native(amount=MAX_AMOUNT + 1)),
    ("bad_amount", segment(properties={"amount": 4.8e15})),
    ("bad_amount", segment(properties={"amount": None})),
    ("too_many_properties", native(properties={f"p{i}": i for i in range(201)})),
]


@pytest.mark.parametrize(
    ("reason", "doc"), REJECTS, ids=[f"{i:02d}-{r}" for i, (r, _) in enumerate(REJECTS)]
)
def test_rejects_with_reason(reason: str, doc: dict[str, Any] | bytes | None) -> None:
    error = reject(doc)
    assert error.reason == reason, error.detail
    assert error.detail


def test_every_reject_reason_is_exercised() -> None:
    # unknown_event is the worker's verdict on a custom track name (runtime.tracking), and
    # merge_refused its verdict on an identity merge (runtime.scorer).
    assert {reason for reason, _ in REJECTS} == set(REJECT_REASONS) - {
        "unknown_event",
        "merge_refused",
    }


def test_type_error_wins_over_other_field_errors() -> None:
    assert reject(native("page_view", lead_id="", amount=-1)).reason == "wrong_topic"
    assert reject(native(lead_id=" ", amount=-1)).reason == "bad_lead_id"
    assert reject(native(time="yesterday", amount=-1)).reason == "bad_time"


def test_details_name_the_field() -> None:
    assert "amount is negative" in reject(native(amount=-3)).detail
    assert "properties.amount" in reject(segment(properties={"amount": "12"})).detail
    assert "belongs on the page_views topic" in reject(native("page_view")).detail
    assert (
        "channel"
        in reject({k: v for k, v in native("first_touch").items() if k != "channel"}).detail
    )


def test_a_bad_outcome_makes_a_valid_dead_letter() -> None:
    error = reject(native(amount=-1))
    record = orjson.loads(dead_letter_record(b"{}", error.reason, error.detail, "t", 0, 1, NOW_MS))
    assert record["reason"] == "bad_amount"


def test_segment_names_and_schema_enum_agree() -> None:
    schema = load_schema(SCHEMA_FILE)
    assert set(schema["$defs"]["segment"]["properties"]["event"]["enum"]) == set(
        SEGMENT_OUTCOME_ALIASES
    )
    assert schema["$defs"]["outcome_type"]["enum"] == [t.value for t in OutcomeType]
    assert schema["$defs"]["channel"]["enum"] == list(CHANNELS)
    assert schema["$defs"]["amount"]["maximum"] == MAX_AMOUNT


@pytest.mark.parametrize("path", sorted((EXAMPLES / "valid").glob("*.json")), ids=lambda p: p.stem)
def test_valid_examples_parse(path: Path) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    outcome = parse_outcome(orjson.dumps(document), NOW_MS + 3 * 86400_000, LIMITS)
    assert outcome.lead_id


@pytest.mark.parametrize(
    "path", sorted((EXAMPLES / "invalid").glob("*.json")), ids=lambda p: p.stem
)
def test_invalid_examples_are_rejected(path: Path) -> None:
    with pytest.raises(InvalidEvent):
        parse_outcome(path.read_bytes(), NOW_MS, LIMITS)


def test_schema_compiles() -> None:
    compile_outcome_schema()
