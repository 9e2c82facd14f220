"""Segment messages -> Kafka records: enough validation to route and key them, Segment's
receivedAt/sentAt handling, and the input topic each kind of message belongs on. Pure."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple, get_args

import orjson

from streamscore.collector.errors import Rejected
from streamscore.events import MAX_LEAD_ID_CHARS, format_time_ms
from streamscore.events import parse_time_ms as events_parse_time_ms
from streamscore.events.rejects import json_kind
from streamscore.events.types import SEGMENT_TRACK_ALIASES, TOPIC_BY_TYPE, TopicKind

MessageType = Literal["track", "page", "screen", "identify", "alias", "group"]
MESSAGE_TYPES: Final[tuple[MessageType, ...]] = get_args(MessageType)
Endpoint = MessageType | Literal["batch"]

# Where each kind of message goes. A `track` goes to its known event type's topic when its
# name is in SEGMENT_TRACK_ALIASES, else to the custom track topic.
TOPIC_KIND_BY_TYPE: Mapping[str, TopicKind] = MappingProxyType(
    {
        "page": TopicKind.PAGE_VIEWS,
        "screen": TopicKind.PAGE_VIEWS,
        "identify": TopicKind.PROFILES,
        "alias": TopicKind.PROFILES,
        "group": TopicKind.PROFILES,
    }
)
_TRACK_KINDS: dict[str, TopicKind] = {
    name: TOPIC_BY_TYPE[event_type] for name, event_type in SEGMENT_TRACK_ALIASES.items()
}
# The field each type needs besides a lead id, as the Segment spec and SDKs require.
_REQUIRED: dict[str, str] = {"track": "event", "alias": "previousId", "group": "groupId"}
# Request-level fields that are never forwarded: a write key is a secret.
_DROPPED = ("writeKey",)
_CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f]")
_MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z, the last instant format_time_ms can write


class Record(NamedTuple):
    """One message ready for its input topic."""

    type: str
    topic_kind: TopicKind
    key: bytes
    value: bytes


def topic_kind(message_type: str, event: object) -> TopicKind:
    """The input topic kind of a (valid) message."""
    if message_type == "track":
        return (
            _TRACK_KINDS.get(event, TopicKind.TRACK) if isinstance(event, str) else TopicKind.TRACK
        )
    return TOPIC_KIND_BY_TYPE[message_type]


def topic_kinds_of(message_type: str) -> tuple[TopicKind, ...]:
    """Every topic kind a message of `message_type` can go to."""
    if message_type == "track":
        return (*sorted(set(_TRACK_KINDS.values())), TopicKind.TRACK)
    return (TOPIC_KIND_BY_TYPE[message_type],)


def records_of(
    doc: dict[str, Any], endpoint: Endpoint, received_ms: int, max_message_bytes: int
) -> list[Record]:
    """Every record of a request body, all valid, or Rejected naming the first bad message."""
    sent_at = doc.get("sentAt")
    if endpoint != "batch":
        return [_record(doc, endpoint, sent_at, received_ms, "body")]
    batch = doc.get("batch")
    if not isinstance(batch, list):
        raise Rejected("bad_batch", f"batch must be an array of messages, got {json_kind(batch)}")
    records = []
    for index, message in enumerate(batch):
        where = f"batch[{index}]"
        if not isinstance(message, dict):
            raise Rejected("bad_batch", f"{where} is a JSON {json_kind(message)}, not an object")
        size = len(orjson.dumps(message))
        if size > max_message_bytes:
            raise Rejected(
                "message_too_large", f"{where} is {size} bytes, limit {max_message_bytes}"
            )
        records.append(_record(message, None, sent_at, received_ms, where))
    return records


def _record(
    msg: dict[str, Any], forced: MessageType | None, batch_sent_at: object, received_ms: int,
    where: str,
) -> Record:  # fmt: skip
    # `msg` is fresh from orjson and owned by this call, so it is completed in place.
    if forced is not None:
        msg["type"] = forced  # the endpoint names the type, as Segment's single-call endpoints do
    message_type = msg.get("type")
    if not isinstance(message_type, str) or message_type not in MESSAGE_TYPES:
        raise Rejected(
            "bad_type", f"{where}: type must be one of {', '.join(MESSAGE_TYPES)}, got "
            f"{_shown(message_type)}",
        )  # fmt: skip
    required = _REQUIRED.get(message_type)
    if required is not None and not _present(msg.get(required), ids=required != "event"):
        kind = "a non-empty string" if required == "event" else "a non-empty string or number"
        raise Rejected("missing_field", f"{where}: a {message_type} call needs {required}, {kind}")
    lead_id = _lead_id(msg, where)
    for field in _DROPPED:
        msg.pop(field, None)
    if msg.get("messageId") is None:
        msg["messageId"] = message_id(msg)
    elif not isinstance(msg["messageId"], str):
        msg["messageId"] = str(msg["messageId"])
    _set_times(msg, batch_sent_at, received_ms)
    kind = topic_kind(message_type, msg.get("event"))
    return Record(message_type, kind, lead_id.encode(), orjson.dumps(msg))


def _present(value: object, ids: bool) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return ids and isinstance(value, int) and not isinstance(value, bool)


def _lead_id(msg: dict[str, Any], where: str) -> str:
    """userId, else anonymousId; numbers become strings (as the Segment SDKs send them)."""
    found: str | None = None
    for field in ("userId", "anonymousId"):
        value = msg.get(field)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            value = msg[field] = str(value)
        if not isinstance(value, str):
            raise Rejected(
                "bad_lead_id", f"{where}: {field} must be a string, got {json_kind(value)}"
            )
        _check_lead_id(value, f"{where}: {field}")
        found = found or value
    if found is None:
        raise Rejected("missing_lead_id", f"{where}: needs a userId or anonymousId")
    return found


def _check_lead_id(value: str, field: str) -> None:
    # The worker's rules (schemas/*.v1.json `lead_id`): refusing here tells the sender.
    if not value or value.isspace():
        raise Rejected("bad_lead_id", f"{field} is empty or only whitespace")
    if len(value) > MAX_LEAD_ID_CHARS:
        raise Rejected(
            "bad_lead_id", f"{field} has {len(value)} characters, max {MAX_LEAD_ID_CHARS}"
        )
    control = _CONTROL_CHAR.search(value)
    if control:
        raise Rejected(
            "bad_lead_id", f"{field} contains control character U+{ord(control.group()):04X}"
        )


def message_id(msg: Mapping[str, Any]) -> str:
    """A messageId for a message sent without one.

    A message that carries its own time gets an id derived from its content, so a client's
    retry of it gets the same id and the worker's de-duplication drops the repeat; one without
    a time gets a random id (two identical untimed calls are two events).
    """
    if msg.get("timestamp") is None and msg.get("originalTimestamp") is None:
        return f"ss-{uuid.uuid4()}"
    content = {k: v for k, v in msg.items() if k not in ("sentAt", "receivedAt")}
    digest = hashlib.blake2b(orjson.dumps(content, option=orjson.OPT_SORT_KEYS), digest_size=16)
    return f"ss-{digest.hexdigest()}"


def _set_times(msg: dict[str, Any], batch_sent_at: object, received_ms: int) -> None:
    """Segment's receivedAt, sentAt and clock-skew correction of timestamp.

    receivedAt is the collector's clock. When the client says when it sent the message
    (sentAt, of the message or else of the batch) and when the event happened on its clock
    (originalTimestamp, else timestamp), timestamp becomes that time plus the skew:
    timestamp = receivedAt - (sentAt - originalTimestamp), and originalTimestamp keeps the
    client's value. Without a parseable sentAt the time is left as sent; with no time at all,
    timestamp = receivedAt.
    """
    msg["receivedAt"] = format_time_ms(received_ms)
    sent_at = msg.get("sentAt", batch_sent_at)
    if sent_at is not None:
        msg["sentAt"] = sent_at
    client_time = msg.get("originalTimestamp")
    if client_time is None:
        client_time = msg.get("timestamp")
    if client_time is None:
        msg["timestamp"] = msg["receivedAt"]
        return
    sent_ms = parse_time_ms(sent_at)
    client_ms = parse_time_ms(client_time)
    if sent_ms is None or client_ms is None:
        return
    corrected_ms = client_ms + received_ms - sent_ms
    if 0 <= corrected_ms <= _MAX_MS:
        msg["originalTimestamp"] = client_time
        msg["timestamp"] = format_time_ms(corrected_ms)


def parse_time_ms(value: object) -> int | None:
    """Epoch ms of an ISO 8601 date-time with a timezone, else None."""
    if not isinstance(value, str):
        return None
    try:
        return events_parse_time_ms(value)
    except ValueError:
        return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
