"""SLA-breach messages match schemas/sla-breach.v1.json; outcome examples pass check-jsonschema."""

from __future__ import annotations

from pathlib import Path

import orjson

from streamscore.events import compile_schema
from streamscore.outcomes.funnel import SlaBreach
from streamscore.outcomes.messages import SLA_BREACH_SCHEMA, breach_id, sla_breach_message
from tests.unit.test_schemas import EXAMPLES, SCHEMAS, _check_jsonschema

BREACH = SlaBreach("h-1", "live", "b2b-2026.11.1", "hot", 1_772_442_000_000, 1_772_456_400_000)


def test_breach_message_matches_its_schema() -> None:
    key, value = sla_breach_message("lead-42", BREACH, 1_772_456_400_412)
    body = orjson.loads(value)
    compile_schema("sla-breach.v1.json")(body)
    assert key == b"lead-42"
    assert body["schema"] == SLA_BREACH_SCHEMA
    assert body["deadline"] == "2026-03-02T13:00:00.000Z"
    assert body["detected_at"] == "2026-03-02T13:00:00.412Z"
    assert body["breach_id"] == breach_id("h-1") != breach_id("h-2")


def test_check_jsonschema_cli_agrees_on_outcomes() -> None:
    # ECMAScript regexes, as producers' tools evaluate the lead id and time patterns.
    schema = SCHEMAS / "outcomes.v1.json"
    valid = sorted((EXAMPLES / "outcomes.v1" / "valid").glob("*.json"))
    result = _check_jsonschema(schema, *valid)
    assert result.returncode == 0, result.stdout + result.stderr
    for invalid in sorted((EXAMPLES / "outcomes.v1" / "invalid").glob("*.json")):
        result = _check_jsonschema(schema, Path(invalid))
        assert result.returncode != 0, invalid.name
