"""What the delivery service accepts as a handoff, and why it refuses the rest (poison)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from streamscore.delivery.service import HANDOFF_SCHEMA_FILE, InvalidHandoff, read_handoff
from streamscore.events import compile_schema

EXAMPLES = Path(__file__).resolve().parents[3] / "schemas" / "examples" / "handoff.v1"
validate = compile_schema(HANDOFF_SCHEMA_FILE)


@pytest.mark.parametrize("path", sorted((EXAMPLES / "valid").glob("*.json")), ids=lambda p: p.stem)
def test_every_valid_example_is_a_handoff(path: Path) -> None:
    raw = path.read_bytes()
    assert read_handoff(raw, validate) == json.loads(raw)


@pytest.mark.parametrize(
    "path", sorted((EXAMPLES / "invalid").glob("*.json")), ids=lambda p: p.stem
)
def test_every_invalid_example_is_refused_with_the_schema_error(path: Path) -> None:
    with pytest.raises(InvalidHandoff, match=r"^not a streamscore\.handoff\.v1: "):
        read_handoff(path.read_bytes(), validate)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "tombstone"),
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"not json {", "not JSON"),
        (b"[1, 2]", "not a JSON object but list"),
        (b'"handoff"', "not a JSON object but str"),
    ],
)
def test_poison_is_refused_saying_why(value: bytes | None, why: str) -> None:
    with pytest.raises(InvalidHandoff, match=why):
        read_handoff(value, validate)


@pytest.mark.parametrize("handoff_id", ["ho 1", "ho\r\nX-Injected: 1", "hö-1", "ho\t1"])
def test_a_handoff_id_unfit_for_a_header_is_refused(handoff_id: str) -> None:
    doc = json.loads((EXAMPLES / "valid" / "handoff.json").read_text())
    doc["handoff_id"] = handoff_id
    validate(doc)  # the schema allows it
    with pytest.raises(InvalidHandoff, match="Idempotency-Key"):
        read_handoff(orjson.dumps(doc), validate)
