"""Input events: envelope model; bytes -> orjson -> schema check -> typed event; Segment aliases."""

from streamscore.events.deadletter import DEAD_LETTER_SCHEMA, dead_letter_record
from streamscore.events.envelope import (
    REJECT_REASONS,
    Event,
    Limits,
    RejectReason,
    format_time_ms,
    parse_event,
)
from streamscore.events.schemas import (
    SCHEMAS_DIR_ENV,
    compile_input_schemas,
    compile_schema,
    load_schema,
    schemas_dir,
)
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
    "REJECT_REASONS",
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
    "schemas_dir",
]
