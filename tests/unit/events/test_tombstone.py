"""The tombstone on the forgotten topic: its schema, its deterministic id, its bounds."""

from __future__ import annotations

from pathlib import Path

import orjson
from jsonschema import Draft202012Validator

from streamscore.events.forgotten import (
    FORGOTTEN_SCHEMA,
    MAX_REASON_CHARS,
    forget_id,
    tombstone_message,
)

SCHEMA = Path(__file__).resolve().parents[3] / "schemas" / "forgotten.v1.json"


def test_the_tombstone_matches_its_schema_and_is_keyed_by_lead() -> None:
    validator = Draft202012Validator(orjson.loads(SCHEMA.read_bytes()))
    for reason in (None, "GDPR art. 17, ticket 4411", "x" * 2000):
        key, value = tombstone_message("lead/é{1}", 1_760_000_000_123, "forgotten", 3, reason)
        body = orjson.loads(value)
        assert key == "lead/é{1}".encode()
        assert not [e.message for e in validator.iter_errors(body)]
        assert body["forgotten_at"] == "2025-10-09T08:53:20.123Z"
        assert body["schema"] == FORGOTTEN_SCHEMA
        assert body["reason"] is None or len(body["reason"]) <= MAX_REASON_CHARS


def test_the_forget_id_is_deterministic_per_lead_and_time() -> None:
    assert forget_id("a", 1) == forget_id("a", 1)
    assert len({forget_id("a", 1), forget_id("a", 2), forget_id("b", 1)}) == 3
