"""Identity merge records on the workers' own topic (schemas/identity.v1.json): build and parse.

Keyed by the lead whose owner applies them, so a merge never needs a call that spans two
leads: merge_into goes to the anonymous id's owner, absorb and forwarded events to the known
lead's (scoring/identity.py describes the protocol).
"""

from __future__ import annotations

import base64
import binascii
from functools import cache
from typing import Any, Literal, NamedTuple

import orjson

from streamscore.errors import InvalidEvent
from streamscore.events.envelope import Event
from streamscore.events.parse import load_record
from streamscore.events.schemas import compile_schema
from streamscore.events.timefmt import format_time_ms, parse_time_ms

SCHEMA = "streamscore.identity.v1"
SCHEMA_FILE = "identity.v1.json"
IdentityOp = Literal["merge_into", "absorb", "event"]


class IdentityRecord(NamedTuple):
    """One parsed identity record; its first four fields are what the aligner and pipeline read
    of any record (id, lead id, type, time)."""

    record_id: str
    lead_id: str  # the lead that applies it
    type: IdentityOp
    time_ms: int
    #: merge_into: the lead to merge into; absorb, event: the id merged into lead_id.
    other: str
    #: The linking event's id (merge_into, absorb), or the forwarded event's.
    event_id: str
    #: absorb: the merged id's contributions, in the store's lead-state format.
    state: bytes | None = None
    #: event: the forwarded event, its lead id lead_id.
    event: Event | None = None


def _key(lead_id: str) -> bytes:
    return lead_id.encode("utf-8", "surrogateescape")


def merge_into_message(lead_id: str, into: str, event_id: str, time_ms: int) -> tuple[bytes, bytes]:
    """(key, value) asking lead_id's owner to merge lead_id into `into`."""
    doc = {
        "schema": SCHEMA, "op": "merge_into", "id": f"merge:{event_id}", "lead_id": lead_id,
        "into": into, "time": format_time_ms(time_ms), "event_id": event_id,
    }  # fmt: skip
    return _key(lead_id), orjson.dumps(doc)


def absorb_message(
    lead_id: str, from_id: str, event_id: str, time_ms: int, state: bytes
) -> tuple[bytes, bytes]:
    """(key, value) handing `from_id`'s contributions (`state`) to lead_id's owner."""
    doc = {
        "schema": SCHEMA, "op": "absorb", "id": f"absorb:{from_id}", "lead_id": lead_id,
        "from": from_id, "time": format_time_ms(time_ms), "event_id": event_id,
        "state": base64.b64encode(state).decode("ascii"),
    }  # fmt: skip
    return _key(lead_id), orjson.dumps(doc)


def forward_message(lead_id: str, from_id: str, event: Event) -> tuple[bytes, bytes]:
    """(key, value) forwarding an event of the merged id `from_id` to lead_id."""
    doc = {
        "schema": SCHEMA, "op": "event", "id": event.event_id, "lead_id": lead_id,
        "from": from_id, "time": format_time_ms(event.time_ms), "event_id": event.event_id,
        "event": {
            "type": event.type, "name": event.name, "link": event.link,
            "anonymous": event.anonymous, "properties": dict(event.properties),
            "context": dict(event.context), "traits": dict(event.traits),
        },
    }  # fmt: skip
    return _key(lead_id), orjson.dumps(doc)


@cache
def _validator() -> Any:
    return compile_schema(SCHEMA_FILE)


def parse_identity(raw: bytes | None) -> IdentityRecord:
    """An identity record from its message value; InvalidEvent when it is not one.

    No time limits apply: a replay reads records as old as the inputs they came from.
    """
    doc = load_record(raw, "identity record", _validator())
    op: IdentityOp = doc["op"]
    lead_id: str = doc["lead_id"]
    time_ms = parse_time_ms(doc["time"])
    if op == "merge_into":
        return IdentityRecord(doc["id"], lead_id, op, time_ms, doc["into"], doc["event_id"])
    if op == "absorb":
        try:
            state = base64.b64decode(doc["state"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidEvent("schema", f"state: {exc}") from None
        return IdentityRecord(doc["id"], lead_id, op, time_ms, doc["from"], doc["event_id"], state)
    e = doc["event"]
    event = Event(
        doc["event_id"], lead_id, e["type"], time_ms, e["properties"], e["context"], e["traits"],
        e.get("name"), e.get("link"), e["anonymous"],
    )  # fmt: skip
    return IdentityRecord(
        doc["id"], lead_id, op, time_ms, doc["from"], doc["event_id"], None, event
    )
