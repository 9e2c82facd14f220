"""Delivery dead letters: valid against their schema, deterministic ids, no secret inside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streamscore.delivery.deadletter import WebhookRef, delivery_dead_letter, redact_url
from streamscore.delivery.policy import DEAD_LETTER_REASONS, Outcome
from streamscore.events import compile_schema

HANDOFF = json.loads(
    (
        Path(__file__).resolve().parents[3] / "schemas/examples/handoff.v1/valid/handoff.json"
    ).read_text()
)
SECRET_PATH = "T0001/B0002/XXXXsecretXXXX"
SECRET_USER = "apiuser:p4ssw0rd"
SECRET_QUERY = "token=sk_live_abc123"
validate = compile_schema("delivery-dead-letter.v1.json")

hosts = st.sampled_from(["hooks.slack.com", "crm.example.com", "127.0.0.1", "[::1]", "h"])
urls = st.builds(
    lambda scheme, user, host, port, path, query: f"{scheme}://{user}{host}{port}/{path}{query}",
    st.sampled_from(["http", "https"]),
    st.sampled_from(["", f"{SECRET_USER}@"]),
    hosts,
    st.sampled_from(["", ":8443", ":80"]),
    st.sampled_from(["", "inbound", f"services/{SECRET_PATH}"]),
    st.sampled_from(["", f"?{SECRET_QUERY}", "#frag"]),
)


@given(urls)
def test_a_redacted_url_keeps_scheme_host_and_port_only(url: str) -> None:
    redacted = redact_url(url)
    for secret in (SECRET_PATH, "p4ssw0rd", "apiuser", "sk_live", "frag", "inbound"):
        assert secret not in redacted
    scheme, rest = redacted.split("://")
    assert url.startswith(scheme + "://")
    assert "/" not in rest and "?" not in rest and "@" not in rest


@given(
    url=urls,
    reason=st.sampled_from([r for r in DEAD_LETTER_REASONS if r != "invalid_handoff"]),
    outcome=st.sampled_from([o for o in Outcome if o is not Outcome.DELIVERED]),
    status=st.none() | st.integers(min_value=100, max_value=599),
    attempts=st.integers(min_value=1, max_value=100),
    excerpt=st.none() | st.text(max_size=2000),
    index=st.integers(min_value=0, max_value=20),
)
def test_a_failed_delivery_record_is_valid_and_secret_free(
    url: str, reason: str, outcome: Outcome, status: int | None, attempts: int,
    excerpt: str | None, index: int,
) -> None:  # fmt: skip
    record = delivery_dead_letter(
        reason=reason, detail="HTTP 500" * 300, topic="ss.v1.handoffs", partition=3, offset=99,
        failed_at_ms=1_714_564_800_123, handoff=HANDOFF, webhook=WebhookRef(index, redact_url(url)),
        outcome=outcome.value, status=status, attempts=attempts, response_excerpt=excerpt,
    )  # fmt: skip
    doc: dict[str, Any] = orjson.loads(record)
    validate(doc)
    for secret in (SECRET_PATH, "p4ssw0rd", SECRET_QUERY):
        assert secret.encode() not in record
    assert doc["handoff"] == HANDOFF and doc["handoff_id"] == HANDOFF["handoff_id"]
    assert doc["webhook"]["index"] == index
    assert len(doc["detail"]) <= 1024


@given(value=st.none() | st.binary(max_size=300_000))
def test_a_poison_record_is_valid_and_keeps_its_bytes_bounded(value: bytes | None) -> None:
    record = delivery_dead_letter(
        reason="invalid_handoff", detail="not JSON", topic="ss.v1.handoffs", partition=0,
        offset=5, failed_at_ms=0, handoff=None, original=value,
    )  # fmt: skip
    doc = orjson.loads(record)
    validate(doc)
    assert len(record) < 400_000  # far under the producer's 1 MB request limit
    if value is None:
        assert doc["original_base64"] is None and doc["original_size"] is None
    else:
        assert doc["original_size"] == len(value)


def test_ids_are_deterministic_per_record_and_webhook() -> None:
    def letter_id(offset: int, index: int) -> str:
        record = delivery_dead_letter(
            reason="rejected", detail="HTTP 400", topic="t", partition=0, offset=offset,
            failed_at_ms=offset * 1000, handoff=HANDOFF, webhook=WebhookRef(index, "https://h"),
            outcome="rejected", status=400, attempts=1,
        )  # fmt: skip
        return str(orjson.loads(record)["delivery_dead_letter_id"])

    assert letter_id(1, 0) == letter_id(1, 0)
    assert len({letter_id(1, 0), letter_id(1, 1), letter_id(2, 0)}) == 3
