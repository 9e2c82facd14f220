"""Locate the JSON Schemas in schemas/ and compile them, once per process.

Each input schema is compiled twice: jsonschema-rs (a Rust implementation) answers "valid or
not" on the hot path, about 1.7 us a message against 6.8 us for fastjsonschema; fastjsonschema
explains a rejection, since its messages name the failing field in plain words.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema_rs

from streamscore.errors import ConfigError
from streamscore.events.types import SCHEMA_FILE_BY_TOPIC, TopicKind

# Read here rather than in config.Settings: the schemas are part of the code, not a deployment
# knob, and parse_event must not need a Settings object. Only packaging/tests override it.
SCHEMAS_DIR_ENV = "STREAMSCORE_SCHEMAS_DIR"

Validator = Callable[[Any], Any]

_LOCAL_REF = "#/$defs/"
_MAX_REF_DEPTH = 32
# The top level of every input schema; parse_event relies on it to pick a branch itself.
_INPUT_DISPATCH = {
    "if": {"required": ["messageId"]},
    "then": {"$ref": "#/$defs/segment"},
    "else": {"$ref": "#/$defs/native"},
}


def schemas_dir() -> Path:
    """The directory of the *.v1.json schemas: $STREAMSCORE_SCHEMAS_DIR, else <repo>/schemas."""
    override = os.environ.get(SCHEMAS_DIR_ENV)
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "schemas"
    if not path.is_dir():
        source = SCHEMAS_DIR_ENV if override else "the default next to the package"
        raise ConfigError(
            f"schemas directory {path} (from {source}) does not exist; "
            f"set {SCHEMAS_DIR_ENV} to the directory holding page-views.v1.json etc."
        )
    return path


def load_schema(filename: str) -> dict[str, Any]:
    """Read one schema file from schemas_dir() as a fresh dict."""
    path = schemas_dir() / filename
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"schema {path}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"schema {path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"schema {path}: top level must be an object")
    return data


def _inline_refs(node: Any, root: dict[str, Any], source: str, depth: int = 0) -> Any:
    # fastjsonschema turns each $ref into a function call with string concatenation for the
    # error path; inlining the local $defs makes the generated code flat (about 2x faster).
    if depth > _MAX_REF_DEPTH:
        raise ConfigError(f"schema {source}: $ref nesting deeper than {_MAX_REF_DEPTH} (a cycle?)")
    if isinstance(node, list):
        return [_inline_refs(item, root, source, depth) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.removeprefix(_LOCAL_REF)
        target = root.get("$defs", {}).get(name) if ref.startswith(_LOCAL_REF) else None
        if target is None or len(node) != 1:
            raise ConfigError(
                f"schema {source}: only a bare local {{'$ref': '#/$defs/<name>'}} is supported, "
                f"got {node!r}"
            )
        return _inline_refs(target, root, source, depth + 1)
    return {key: _inline_refs(value, root, source, depth) for key, value in node.items()}


def _compile(definition: dict[str, Any], source: str) -> Validator:
    try:
        # use_default=False: validation must never write `default`s into the message.
        validator: Validator = fastjsonschema.compile(
            definition, use_default=False, use_formats=False
        )
    except fastjsonschema.JsonSchemaDefinitionException as exc:
        raise ConfigError(f"schema {source}: cannot compile: {exc}") from exc
    return validator


@functools.cache
def compile_schema(filename: str) -> Validator:
    """A fastjsonschema validator for a whole schema file (outputs, tests); raises its exception."""
    schema = load_schema(filename)
    body = {key: value for key, value in schema.items() if key != "$defs"}
    return _compile(_inline_refs(body, schema, filename), filename)


@functools.cache
def input_validators(kind: TopicKind) -> tuple[Validator, Validator]:
    """The (native, segment) branch validators of a topic's input schema."""
    filename = SCHEMA_FILE_BY_TOPIC[kind]
    schema = load_schema(filename)
    if any(schema.get(key) != value for key, value in _INPUT_DISPATCH.items()):
        raise ConfigError(
            f"schema {filename}: an input schema must dispatch on messageId exactly as "
            f"{json.dumps(_INPUT_DISPATCH)}"
        )
    # parse_event checks `"messageId" in doc` itself and calls one branch: fastjsonschema
    # implements a failing `if` by raising and catching, which costs ~1.5 us per message.
    native = _inline_refs(schema["else"], schema, filename)
    segment = _inline_refs(schema["then"], schema, filename)
    return _compile(native, filename), _compile(segment, filename)


@functools.cache
def input_check(kind: TopicKind) -> jsonschema_rs.Validator:
    """A topic's whole input schema, read as is, compiled by jsonschema-rs (the hot-path check)."""
    filename = SCHEMA_FILE_BY_TOPIC[kind]
    try:
        return jsonschema_rs.validator_for(load_schema(filename))
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        raise ConfigError(f"schema {filename}: not a valid JSON Schema: {exc}") from None


def compile_input_schemas() -> None:
    """Load and compile every input schema now, so a broken install fails at startup."""
    for kind in TopicKind:
        input_validators(kind)
        input_check(kind)
