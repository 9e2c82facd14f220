"""The model lab's files the console shows: candidate rules and lead snapshots in one directory.

`console_lab_dir` holds candidate rules files (*.yaml, *.yml, *.toml), lead snapshots
(*.jsonl, as `streamscore diff` reads them) and outcomes (outcomes*.jsonl). A request names a
file only by a name of the directory's listing: user input is never joined to a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from streamscore.errors import RulesError
from streamscore.lab.diff import Diff, diff_snapshots
from streamscore.lab.files import read_outcomes, read_snapshot
from streamscore.lab.promote import describe_change, rules_data
from streamscore.scoring.rules import CompiledRules, check_lines, parse_rules_text

RULES_SUFFIXES: Final = (".yaml", ".yml", ".toml")
SNAPSHOT_SUFFIX: Final = ".jsonl"
OUTCOMES_PREFIX: Final = "outcomes"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A candidate rules file: its check lines, its version and how it differs from live."""

    name: str
    ok: bool
    version: str | None
    check: tuple[str, ...]  # what `streamscore rules check` prints for it
    change: tuple[str, ...]  # lab.promote.describe_change against the live rules


@dataclass(frozen=True, slots=True)
class LabFiles:
    """The names of the lab directory's files, by kind."""

    rules: tuple[str, ...]
    snapshots: tuple[str, ...]
    outcomes: tuple[str, ...]


def list_files(lab_dir: Path | None) -> LabFiles:
    """The lab directory's files by kind (nothing when it is unset or unreadable)."""
    if lab_dir is None:
        return LabFiles((), (), ())
    try:
        names = sorted(p.name for p in lab_dir.iterdir() if p.is_file())
    except OSError:
        return LabFiles((), (), ())
    jsonl = [n for n in names if n.endswith(SNAPSHOT_SUFFIX)]
    return LabFiles(
        rules=tuple(n for n in names if n.endswith(RULES_SUFFIXES) and not n.startswith(".")),
        snapshots=tuple(n for n in jsonl if not n.startswith(OUTCOMES_PREFIX)),
        outcomes=tuple(n for n in jsonl if n.startswith(OUTCOMES_PREFIX)),
    )


def listed(lab_dir: Path | None, name: str | None, names: tuple[str, ...]) -> Path | None:
    """The path of `name` when it is one of `names` (the listing), else None."""
    if lab_dir is None or not name or name not in names:
        return None
    return lab_dir / name


def read_candidate(lab_dir: Path, name: str, live_text: str, live_source: str) -> Candidate:
    """A candidate rules file checked, and compared with the live file."""
    path = lab_dir / name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Candidate(name, False, None, (f"{name}: cannot read: {exc}",), ())
    ok, lines = check_lines(text, name)
    version = None
    change: tuple[str, ...] = ()
    if ok:
        version = parse_rules_text(text, name).version
        change = tuple(
            describe_change(rules_data(live_text, live_source), rules_data(text, name)).lines()
        )
    return Candidate(name, ok, version, tuple(lines), change)


def candidate_rules(lab_dir: Path | None, name: str, files: LabFiles) -> CompiledRules | None:
    """A valid candidate's compiled rules, for the simulator (None if unlisted or invalid)."""
    path = listed(lab_dir, name, files.rules)
    if path is None:
        return None
    try:
        return parse_rules_text(path.read_text(encoding="utf-8"), name)
    except (OSError, UnicodeDecodeError, RulesError):
        return None


def diff_files(
    lab_dir: Path, live: str, candidate: str, outcomes: str | None, files: LabFiles
) -> Diff | None:
    """The lab's diff of two listed snapshots (and outcomes); None if a name is not listed.

    Raises LabInputError (with the file and line) for a malformed file.
    """
    live_path = listed(lab_dir, live, files.snapshots)
    candidate_path = listed(lab_dir, candidate, files.snapshots)
    outcomes_path = listed(lab_dir, outcomes, files.outcomes)
    if live_path is None or candidate_path is None or (outcomes and outcomes_path is None):
        return None
    return diff_snapshots(
        read_snapshot(live_path),
        read_snapshot(candidate_path),
        read_outcomes(outcomes_path) if outcomes_path is not None else None,
    )
