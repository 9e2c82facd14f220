"""The event contract: input envelopes (native and Segment) parsed to Event, rejects, outputs."""

from streamscore.events.deadletter import DEAD_LETTER_SCHEMA, dead_letter_record
from streamscore.events.envelope import MAX_LEAD_ID_CHARS, Event, Limits
from streamscore.events.parse import parse_event
from streamscore.events.rejects import REJECT_REASONS, RejectReason
from streamscore.events.schemas import (
    SCHEMAS_DIR_ENV,
    compile_input_schemas,
    compile_schema,
    load_schema,
    schemas_dir,
)
from streamscore.events.timefmt import RFC3339_PATTERN, format_time_ms, parse_time_ms
from streamscore.events.types import (
    SCHEMA_FILE_BY_TOPIC,
    SEGMENT_TRACK_ALIASES,
    SEGMENT_TYPE_ALIASES,
    TOPIC_BY_TYPE,
    TYPES_BY_TOPIC,
    EventType,
    TopicKind,
)

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "MAX_LEAD_ID_CHARS",
    "REJECT_REASONS",
    "RFC3339_PATTERN",
    "SCHEMAS_DIR_ENV",
    "SCHEMA_FILE_BY_TOPIC",
    "SEGMENT_TRACK_ALIASES",
    "SEGMENT_TYPE_ALIASES",
    "TOPIC_BY_TYPE",
    "TYPES_BY_TOPIC",
    "Event",
    "EventType",
    "Limits",
    "RejectReason",
    "TopicKind",
    "compile_input_schemas",
    "compile_schema",
    "dead_letter_record",
    "format_time_ms",
    "load_schema",
    "parse_event",
    "parse_time_ms",
    "schemas_dir",
]
