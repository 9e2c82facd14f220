"""Every schema in schemas/ is valid draft 2020-12 and agrees with its examples."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
from jsonschema import Draft202012Validator

from streamscore.events import compile_schema

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES = SCHEMAS / "examples"
SCHEMA_FILES = sorted(SCHEMAS.glob("*.json"))
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


def _examples(group: str) -> list[tuple[Path, Path]]:
    return [
        (schema, example)
        for schema in SCHEMA_FILES
        for example in sorted((EXAMPLES / schema.stem / group).glob("*.json"))
    ]


VALID = _examples("valid")
INVALID = _examples("invalid")


def _id(case: tuple[Path, Path]) -> str:
    return f"{case[0].stem}/{case[1].stem}"


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@cache
def _jsonschema(schema: Path) -> Draft202012Validator:
    return Draft202012Validator(_load(schema))


@cache
def _fastjsonschema(schema: Path) -> Any:
    # The file as is (fastjsonschema resolves its $refs), not streamscore's inlined compile.
    return fastjsonschema.compile(_load(schema), use_default=False, use_formats=False)


def test_the_expected_schemas_exist() -> None:
    assert {p.name for p in SCHEMA_FILES} == {
        "page-views.v1.json",
        "email-events.v1.json",
        "downloads.v1.json",
        "unsubscribes.v1.json",
        "profiles.v1.json",
        "track.v1.json",
        "handoff.v1.json",
        "tier-change.v1.json",
        "dead-letter.v1.json",
        "outcomes.v1.json",
        "sla-breach.v1.json",
        "delivery-dead-letter.v1.json",
        "identity.v1.json",
        "account.v1.json",
        "account-handoff.v1.json",
        "forgotten.v1.json",
    }


@pytest.mark.parametrize("schema", SCHEMA_FILES, ids=lambda p: p.stem)
def test_schema_is_valid_draft_2020_12(schema: Path) -> None:
    document = _load(schema)
    assert document["$schema"] == DRAFT_2020_12
    assert document["$id"] == f"urn:streamscore:schema:{schema.stem}"
    Draft202012Validator.check_schema(document)


@pytest.mark.parametrize("schema", SCHEMA_FILES, ids=lambda p: p.stem)
def test_schema_has_valid_and_invalid_examples(schema: Path) -> None:
    for group in ("valid", "invalid"):
        assert list((EXAMPLES / schema.stem / group).glob("*.json")), f"{schema.stem}/{group}"


def test_every_example_directory_has_a_schema() -> None:
    assert {d.name for d in EXAMPLES.iterdir()} == {p.stem for p in SCHEMA_FILES}
    for directory in EXAMPLES.iterdir():
        assert {d.name for d in directory.iterdir()} == {"valid", "invalid"}, directory


@pytest.mark.parametrize("case", VALID, ids=_id)
def test_valid_example_validates(case: tuple[Path, Path]) -> None:
    schema, example = case
    document = _load(example)
    errors = [e.message for e in _jsonschema(schema).iter_errors(document)]
    assert not errors
    _fastjsonschema(schema)(document)
    compile_schema(schema.name)(document)


@pytest.mark.parametrize("case", INVALID, ids=_id)
def test_invalid_example_fails(case: tuple[Path, Path]) -> None:
    schema, example = case
    document = _load(example)
    assert not _jsonschema(schema).is_valid(document)
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        _fastjsonschema(schema)(document)
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        compile_schema(schema.name)(document)


def _check_jsonschema(*args: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "check-jsonschema"
    assert cli.is_file(), f"{cli} is missing: pip install check-jsonschema (the test extra)"
    return subprocess.run(
        [str(cli), "--schemafile", str(args[0]), *map(str, args[1:])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_jsonschema_cli_agrees() -> None:
    # check-jsonschema evaluates `pattern` as ECMAScript regex, as producers' tools will.
    schema = SCHEMAS / "page-views.v1.json"
    valid = sorted((EXAMPLES / schema.stem / "valid").glob("*.json"))
    result = _check_jsonschema(schema, *valid)
    assert result.returncode == 0, result.stdout + result.stderr
    invalid = EXAMPLES / schema.stem / "invalid" / "lead-id-control-character.json"
    result = _check_jsonschema(schema, invalid)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "lead_id" in result.stdout
