"""Account records (schemas/account.v1.json) and account handoffs (account-handoff.v1.json).

A lead's owner sends its contribution to the account's owner on the workers' own topic, keyed
by account id, so the account's state is only ever written by the worker that owns that key
(scoring/accounts.py describes the aggregate).
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal, NamedTuple

import orjson

from streamscore.events.parse import load_record
from streamscore.events.schemas import compile_schema
from streamscore.events.timefmt import format_time_ms, parse_time_ms
from streamscore.scoring.accounts import LEFT, AccountHandoff, Contribution

SCHEMA = "streamscore.account.v1"
SCHEMA_FILE = "account.v1.json"
HANDOFF_SCHEMA = "streamscore.account-handoff.v1"
AccountKind = Literal["member", "leave"]


class AccountRecord(NamedTuple):
    """One parsed account record. Its first four fields are what the aligner reads of any
    record (id, key id, type, time): the key id is the account's, not a lead's."""

    record_id: str
    account_id: str
    type: AccountKind
    time_ms: int
    contribution: Contribution

    @property
    def lead_id(self) -> str:
        """The account id: the aligner and the pipeline key records by their second field."""
        return self.account_id


def _key(account_id: str) -> bytes:
    return account_id.encode("utf-8", "surrogateescape")


def account_message(c: Contribution) -> tuple[bytes, bytes]:
    """(key, value) of a lead's contribution to its account (engagement LEFT: kind leave)."""
    leave = c.engagement < 0
    doc: dict[str, Any] = {
        "schema": SCHEMA, "kind": "leave" if leave else "member",
        "id": f"{c.lead_id}@{c.anchor_ms}{'-' if leave else ''}",
        "account_id": c.account_id, "lead_id": c.lead_id,
        "engagement": 0 if leave else c.engagement,
        "time": format_time_ms(c.anchor_ms),
    }  # fmt: skip
    if c.traits:
        doc["traits"] = c.traits
    return _key(c.account_id), orjson.dumps(doc)


@cache
def _validator() -> Any:
    return compile_schema(SCHEMA_FILE)


def parse_account(raw: bytes | None) -> AccountRecord:
    """An account record from its message value; InvalidEvent when it is not one."""
    doc = load_record(raw, "account record", _validator())
    time_ms = parse_time_ms(doc["time"])
    engagement = LEFT if doc["kind"] == "leave" else float(doc["engagement"])
    contribution = Contribution(
        doc["account_id"], doc["lead_id"], engagement, time_ms, doc.get("traits")
    )
    return AccountRecord(doc["id"], doc["account_id"], doc["kind"], time_ms, contribution)


def account_handoff_message(
    h: AccountHandoff, traits: dict[str, Any], rules_version: str, scored_ms: int
) -> tuple[bytes, bytes]:
    """(key, value) of an account handoff."""
    doc = {
        "schema": HANDOFF_SCHEMA, "handoff_id": f"acct:{h.account_id}:{h.seq}",
        "account_id": h.account_id, "time": format_time_ms(h.time_ms),
        "score": round(h.score, 6), "tier": h.tier, "engagement": round(h.engagement, 6),
        "fit": round(h.fit, 6),
        "leads": [{"lead_id": lead, "engagement": round(v, 6)} for lead, v in h.leads],
        "traits": traits, "rules_version": rules_version,
        "scored_at": format_time_ms(scored_ms),
    }  # fmt: skip
    return _key(h.account_id), orjson.dumps(doc)
