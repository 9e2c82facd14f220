"""Where each field of a rules file sits: node path -> line, for YAML and TOML; pure."""

from __future__ import annotations

import re

import yaml

Path = tuple[str | int, ...]


def line_index(text: str, is_yaml: bool) -> dict[Path, int]:
    """Map each node path of a rules file to its 1-based line, so errors can point into it."""
    return yaml_line_index(text) if is_yaml else toml_line_index(text)


def toml_line_index(text: str) -> dict[Path, int]:
    """Lines of TOML tables, array-of-table entries and keys (tomllib keeps no positions).

    Values inside inline tables and multi-line arrays are not indexed: an error there points
    at the line of the key that holds them. Only called on text tomllib has accepted.
    """
    lines: dict[Path, int] = {}
    entries: dict[Path, int] = {}  # array-of-tables path -> entries so far
    table: Path = ()
    depth = 0  # open brackets and braces carried over from earlier lines
    in_string: str | None = None  # the delimiter of a multi-line string still open
    for number, raw in enumerate(text.splitlines(), 1):
        code, depth, in_string, started_outside = _toml_code(raw, depth, in_string)
        if not started_outside:
            continue
        header = _TOML_HEADER.match(code)
        if header:
            path = tuple(_toml_key_parts(header.group(2)))
            if header.group(1) == "[[":
                index = entries.get(path, 0)
                entries[path] = index + 1
                lines.setdefault(path, number)
                table = (*path, index)
            else:
                table = path
            lines[table] = number
            continue
        key = _TOML_KEY.match(code)
        if key:
            lines[(*table, *_toml_key_parts(key.group(1)))] = number
    return lines


_TOML_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_TOML_KEY = re.compile(rf"\s*({_TOML_KEY_PART}(?:\s*\.\s*{_TOML_KEY_PART})*)\s*=")
_TOML_HEADER = re.compile(r"\s*(\[\[?)\s*(.+?)\s*\]\]?\s*$")


def _toml_key_parts(dotted: str) -> list[str]:
    return [part.strip().strip("\"'") for part in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", dotted)]


def _toml_code(line: str, depth: int, in_string: str | None) -> tuple[str, int, str | None, bool]:
    """One line's code without comments or multi-line strings; the bracket depth and the open
    multi-line string after it; whether it began outside any value (so it can hold a key)."""
    started_outside = depth == 0 and in_string is None
    out: list[str] = []
    i = 0
    while i < len(line):
        if in_string is not None:
            end = line.find(in_string, i)
            while end > 0 and in_string == '"""' and line[end - 1] == "\\":
                end = line.find(in_string, end + 1)
            if end < 0:
                return "".join(out), depth, in_string, started_outside
            i = end + len(in_string)
            in_string = None
            out.append('""')
            continue
        c = line[i]
        if c == "#":
            break
        if line.startswith('"""', i) or line.startswith("'''", i):
            in_string = line[i : i + 3]
            i += 3
            continue
        if c in "\"'":
            j = i + 1
            while j < len(line) and line[j] != c:
                j += 2 if c == '"' and line[j] == "\\" else 1
            out.append(line[i : j + 1])  # kept: quoted keys need their text
            i = j + 1
            continue
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        out.append(c)
        i += 1
    return "".join(out), depth, in_string, started_outside


def yaml_line_index(text: str) -> dict[Path, int]:
    """Lines of YAML nodes and mapping keys (empty when the text does not compose)."""
    lines: dict[Path, int] = {}

    def walk(node: yaml.Node, path: Path) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                k = str(key.value)
                lines[(*path, k)] = key.start_mark.line + 1
                walk(value, (*path, k))
                lines[(*path, k)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if root is not None:
        walk(root, ())
    return lines
