"""Promotion: a candidate rules file becomes the live one that hot reload watches, atomically,
with the replaced version kept in `history/` next to it for rollback and a log of who was live
when (history/promotions.jsonl).

The replacement is a temporary file in the live file's directory, fsynced, then renamed over
it: a reader (the worker's reload) sees the old file or the new one, never a mix. File I/O only;
the caller passes the time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import orjson
import yaml

from streamscore.errors import RulesError
from streamscore.lab.errors import PromotionError
from streamscore.scoring.rules import parse_rules_text

HISTORY_DIR: Final = "history"
LOG_NAME: Final = "promotions.jsonl"
_RULE_SECTIONS: Final = ("engagement", "fit")


@dataclass(frozen=True, slots=True)
class RulesChange:
    """What a promotion changes: version, rules added and removed, points, anything else."""

    old_version: str | None
    new_version: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    points: tuple[tuple[str, float, float], ...]  # (rule id, old, new)
    other: tuple[str, ...]  # e.g. "tiers", "handoff", "conditions of pricing_page"

    def lines(self) -> list[str]:
        """The change as lines a person reads."""
        out = [f"version: {self.old_version or '(none)'} -> {self.new_version}"]
        if self.added:
            out.append(f"rules added: {', '.join(self.added)}")
        if self.removed:
            out.append(f"rules removed: {', '.join(self.removed)}")
        for rule, old, new in self.points:
            out.append(f"points: {rule} {old:g} -> {new:g}")
        if self.other:
            out.append(f"also changed: {', '.join(self.other)}")
        if not (self.added or self.removed or self.points or self.other):
            out.append("no change but the version")
        return out


@dataclass(frozen=True, slots=True)
class Promotion:
    """A done promotion (or rollback): what changed and where the replaced file is kept."""

    action: Literal["promote", "rollback"]
    live: Path
    kept: Path | None  # the replaced live file's copy in history/; None if there was none
    change: RulesChange


def rules_data(text: str, source: str) -> dict[str, Any]:
    """A rules file's raw data (YAML or TOML by its name)."""
    data = tomllib.loads(text) if source.endswith(".toml") else yaml.safe_load(text)
    return data if isinstance(data, dict) else {}


def describe_change(old: dict[str, Any] | None, new: dict[str, Any]) -> RulesChange:
    """Compare two rules files' data."""
    old = old or {}

    def rules(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            str(r.get("id")): r
            for section in _RULE_SECTIONS
            for r in data.get(section) or []
            if isinstance(r, dict)
        }

    before, after = rules(old), rules(new)
    points = []
    other = []
    for rule_id in sorted(before.keys() & after.keys()):
        a, b = before[rule_id], after[rule_id]
        if float(a.get("points", 0)) != float(b.get("points", 0)):
            points.append((rule_id, float(a.get("points", 0)), float(b.get("points", 0))))
        strip = {"points", "cap"}
        cap_a, cap_b = a.get("cap") or {}, b.get("cap") or {}
        if (
            {k: v for k, v in a.items() if k not in strip}
            != {k: v for k, v in b.items() if k not in strip}
            or cap_a.get("window") != cap_b.get("window")
            or bool(cap_a) != bool(cap_b)
        ):
            other.append(f"conditions of {rule_id}")
    for key in sorted((old.keys() | new.keys()) - {"version", *_RULE_SECTIONS}):
        if old.get(key) != new.get(key):
            other.append(key)
    return RulesChange(
        old_version=str(old["version"]) if "version" in old else None,
        new_version=str(new.get("version")),
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        points=tuple(points),
        other=tuple(other),
    )


def promote(
    candidate: Path,
    live: Path,
    now: datetime,
    action: Literal["promote", "rollback"] = "promote",
) -> Promotion:
    """Make `candidate` the live rules; raise RulesError (invalid) or PromotionError (refused)."""
    try:
        text = candidate.read_text(encoding="utf-8")
    except OSError as exc:
        raise PromotionError(f"cannot read {candidate}: {exc.strerror}") from None
    if live.suffix == ".toml" and candidate.suffix != ".toml":
        raise PromotionError(f"{live} is TOML and {candidate} is not: convert one of them")
    try:
        # Checked under the live file's name: that is how the worker will read it.
        rules = parse_rules_text(text, str(live))
    except RulesError as exc:
        raise RulesError(str(candidate), exc.problems) from None
    if live.is_symlink():
        raise PromotionError(
            f"{live} is a symbolic link (a mounted ConfigMap?): update what it points to instead"
        )
    history = live.parent / HISTORY_DIR
    history.mkdir(exist_ok=True)
    with _locked(history):
        old_text = _read_if_exists(live)
        old_data = None
        old_version = None
        if old_text is not None:
            try:
                old_version = parse_rules_text(old_text, str(live)).version
                old_data = rules_data(old_text, str(live))
            except RulesError:
                old_version = None  # an invalid live file is still kept, as "invalid"
        if old_version == rules.version:
            raise PromotionError(
                f"{candidate} has the live version {rules.version!r}: give it a new version, so "
                "reloads, metrics and KPIs can tell the two apart"
            )
        change = describe_change(old_data, rules_data(text, str(live)))
        kept = None
        if old_text is not None:
            label = old_version or f"invalid-{now.astimezone(UTC):%Y%m%dT%H%M%S}"
            kept = _keep(history, live, label, old_text)
        _replace_atomically(live, text)
        _log(history, now, action, change, kept, candidate)
    return Promotion(action, live, kept, change)


def rollback(live: Path, now: datetime, to_version: str | None = None) -> Promotion:
    """Make a version kept in history/ live again: `to_version`, or the one live before now."""
    history = live.parent / HISTORY_DIR
    kept = kept_versions(live)
    if to_version is None:
        current = _current_version(live)
        entries = [e for e in _log_entries(history) if e.get("to_version") == current]
        if not entries or not entries[-1].get("from_version"):
            raise PromotionError(
                f"no promotion to the live version {current!r} is recorded; name the version "
                f"to roll back to with --to (kept: {', '.join(kept) or 'none'})"
            )
        to_version = str(entries[-1]["from_version"])
    if to_version not in kept:
        raise PromotionError(
            f"version {to_version!r} is not kept in {history} (kept: {', '.join(kept) or 'none'})"
        )
    return promote(kept[to_version], live, now, action="rollback")


def kept_versions(live: Path) -> dict[str, Path]:
    """Version -> its newest copy in history/ (files named <stem>.<version>[~<n>]<suffix>)."""
    history = live.parent / HISTORY_DIR
    found: dict[str, tuple[int, Path]] = {}
    pattern = re.compile(
        rf"^{re.escape(live.stem)}\.(?P<version>[^~]+)(?:~(?P<n>\d+))?{re.escape(live.suffix)}$"
    )
    for path in sorted(history.glob(f"{live.stem}.*{live.suffix}")):
        match = pattern.match(path.name)
        if match is None or match["version"].startswith("invalid-"):
            continue
        n = int(match["n"] or 0)
        if match["version"] not in found or n > found[match["version"]][0]:
            found[match["version"]] = (n, path)
    return {version: path for version, (_, path) in sorted(found.items())}


def _current_version(live: Path) -> str | None:
    text = _read_if_exists(live)
    if text is None:
        return None
    try:
        return parse_rules_text(text, str(live)).version
    except RulesError:
        return None


def _read_if_exists(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PromotionError(f"cannot read {path}: {exc.strerror}") from None


def _keep(history: Path, live: Path, version: str, text: str) -> Path:
    """Copy the replaced file into history/, never overwriting a different file of that name."""
    n = 0
    while True:
        # "~" never appears in a version, so the copy number cannot be read as part of one.
        name = f"{live.stem}.{version}{f'~{n}' if n else ''}{live.suffix}"
        path = history / name
        existing = _read_if_exists(path)
        if existing == text:
            return path
        if existing is None:
            _replace_atomically(path, text)
            return path
        n += 1


def _replace_atomically(path: Path, text: str) -> None:
    """Write a temporary file next to `path`, flush it to disk, rename it over `path`."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename itself is durable once the directory is synced.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _locked(history: Path) -> Iterator[None]:
    """One promotion at a time per directory (an advisory lock on history/.lock)."""
    with (history / ".lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _log(
    history: Path,
    now: datetime,
    action: str,
    change: RulesChange,
    kept: Path | None,
    candidate: Path,
) -> None:
    entry = {
        "time": now.astimezone(UTC).isoformat(timespec="seconds"),
        "action": action,
        "from_version": change.old_version,
        "to_version": change.new_version,
        "kept": kept.name if kept is not None else None,
        "source": str(candidate),
    }
    with (history / LOG_NAME).open("ab") as handle:
        handle.write(orjson.dumps(entry) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def _log_entries(history: Path) -> list[dict[str, Any]]:
    try:
        raw = (history / LOG_NAME).read_bytes()
    except FileNotFoundError:
        return []
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


def promotions(live: Path) -> list[dict[str, Any]]:
    """The promotion log: which version was live from when (oldest first)."""
    return _log_entries(live.parent / HISTORY_DIR)
