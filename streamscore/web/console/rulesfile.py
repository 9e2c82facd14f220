"""The rules in force, as the console reads them: reloaded when the file changes, kept if invalid.

The worker hot-reloads the same file, so the console follows it the same way: a change of
modification time or size reloads it; an invalid file keeps the last valid rules (the worker
keeps them too) and the Rules page shows the file's problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamscore.errors import RulesError
from streamscore.scoring.rules import CompiledRules, check_lines, parse_rules_text


@dataclass(frozen=True, slots=True)
class RulesFile:
    """The rules in force and the file they came from."""

    path: Path
    rules: CompiledRules
    text: str  # the text of `rules`
    modified_ns: int
    #: When the file now on disk is invalid: what `streamscore rules check` says about it.
    problems: tuple[str, ...] = ()


class RulesWatch:
    """Loads the rules file, and again whenever it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._current: RulesFile | None = None

    def _stat(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return (-1, -1)
        return (st.st_mtime_ns, st.st_size)

    def get(self) -> RulesFile:
        """The rules in force; raises RulesError only if the file has never been valid."""
        stamp = self._stat()
        if self._current is not None and stamp == self._stamp:
            return self._current
        self._stamp = stamp
        source = str(self.path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems: tuple[str, ...] = (f"{source}: cannot read: {exc}",)
        else:
            try:
                rules = parse_rules_text(text, source)
            except RulesError:
                problems = tuple(check_lines(text, source)[1])
            else:
                self._current = RulesFile(self.path, rules, text, stamp[0])
                return self._current
        if self._current is None:
            raise RulesError(source, [p.removeprefix(f"{source}: ") for p in problems])
        current = self._current
        self._current = RulesFile(current.path, current.rules, current.text, stamp[0], problems)
        return self._current
