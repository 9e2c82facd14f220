"""The TOML line index finds every table, array-of-tables entry and key where it was written."""

from __future__ import annotations

import tomllib

from hypothesis import given
from hypothesis import strategies as st

from streamscore.scoring.source_lines import toml_line_index

Path = tuple[str | int, ...]

KEYS = st.sampled_from(["id", "points", "when", "a-b", "x_1", '"dotted.key"', "'lit'"])
# Values that hide brackets, braces, comment marks and quotes inside strings, or span lines.
VALUES = st.sampled_from(
    [
        "1",
        '"[[not.a.table]]"',
        "'# not a comment'",
        '"esc \\" [ a string"',
        '{ a = 1, b = "}" }',
        '[\n  "x[",\n  { y = 2 },\n]',
        '"""\n[fake]\nkey = 1\n"""',
        "'''\n[[fake]]\n'''",
        "[1, 2] # a comment [",
    ]
)
ENTRIES = st.lists(st.tuples(KEYS, VALUES), max_size=4, unique_by=lambda kv: kv[0])
SECTIONS = st.lists(
    st.tuples(
        st.sampled_from(["table", "entry"]), st.sampled_from(["decay", "fit", "t.u"]), ENTRIES
    ),
    max_size=5,
)


def _name(key: str) -> str:
    return key.strip("\"'")


Section = tuple[str, str, list[tuple[str, str]]]


def _render(top: list[tuple[str, str]], sections: list[Section]) -> tuple[str, dict[Path, int]]:
    """Valid TOML of these keys and sections, and the line each key and table is written on."""
    lines: list[str] = []
    expected: dict[Path, int] = {}

    def put(table: Path, entries: list[tuple[str, str]]) -> None:
        for key, value in entries:
            expected[(*table, _name(key))] = len(lines) + 1
            lines.extend(f"{key} = {value}".split("\n"))

    put((), top)
    entries_of: dict[str, int] = {}
    used_tables: set[str] = set()
    for kind, name, entries in sections:
        path = tuple(name.split("."))
        if kind == "table":
            if name in used_tables or name in entries_of:
                continue  # TOML allows a table once, and not over an array of tables
            used_tables.add(name)
            lines.append(f"[{name}]")
            table: Path = path
        else:
            if name in used_tables:
                continue
            index = entries_of.get(name, 0)
            entries_of[name] = index + 1
            lines.append(f"[[{name}]]")
            table = (*path, index)
        expected[table] = len(lines)
        put(table, entries)
    return "\n".join(lines) + "\n", expected


@given(top=ENTRIES, sections=SECTIONS)
def test_every_key_and_table_is_found_on_its_line(
    top: list[tuple[str, str]], sections: list[Section]
) -> None:
    text, expected = _render(top, sections)
    tomllib.loads(text)  # the generator writes valid TOML
    index = toml_line_index(text)
    assert {path: index.get(path) for path in expected} == expected
