"""The console's files: the lab directory (by listed name only) and the watched rules file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamscore.errors import RulesError
from streamscore.web.console.labdir import (
    candidate_rules,
    diff_files,
    list_files,
    read_candidate,
)
from streamscore.web.console.rulesfile import RulesWatch
from tests.conftest import RULES_FILE
from tests.lab_synthetic import sample_snapshots, write_lines

LIVE_TEXT = RULES_FILE.read_text(encoding="utf-8")


def lab(tmp_path: Path) -> Path:
    folder = tmp_path / "lab"
    folder.mkdir()
    candidate = LIVE_TEXT.replace('version: "b2b-2026.11.1"', 'version: "b2b-2026.12.0"')
    candidate = candidate.replace(
        "    points: 10\n    cap: {points: 30", "    points: 20\n    cap: {points: 30"
    )
    (folder / "candidate.yaml").write_text(candidate, encoding="utf-8")
    (folder / "broken.yaml").write_text("version: x\ntiers: [1]\n", encoding="utf-8")
    live, cand, outcomes = sample_snapshots(300, 3)
    write_lines(folder / "live.jsonl", live)
    write_lines(folder / "candidate.jsonl", cand)
    write_lines(folder / "outcomes.jsonl", outcomes)
    (folder / "notes.txt").write_text("not a lab file")
    return folder


def test_files_are_listed_by_kind(tmp_path: Path) -> None:
    files = list_files(lab(tmp_path))
    assert files.rules == ("broken.yaml", "candidate.yaml")
    assert files.snapshots == ("candidate.jsonl", "live.jsonl")
    assert files.outcomes == ("outcomes.jsonl",)
    assert list_files(None).rules == ()
    assert list_files(tmp_path / "missing").snapshots == ()


def test_candidates_are_checked_and_compared_with_live(tmp_path: Path) -> None:
    folder = lab(tmp_path)
    good = read_candidate(folder, "candidate.yaml", LIVE_TEXT, str(RULES_FILE))
    assert good.ok and good.version == "b2b-2026.12.0"
    assert good.change == (
        "version: b2b-2026.11.1 -> b2b-2026.12.0",
        "points: pricing_page 10 -> 20",
    )
    bad = read_candidate(folder, "broken.yaml", LIVE_TEXT, str(RULES_FILE))
    assert not bad.ok and bad.version is None
    assert all(line.startswith("broken.yaml: line ") for line in bad.check)
    files = list_files(folder)
    assert candidate_rules(folder, "candidate.yaml", files) is not None
    assert candidate_rules(folder, "broken.yaml", files) is None


def test_only_listed_names_are_read(tmp_path: Path) -> None:
    folder = lab(tmp_path)
    files = list_files(folder)
    outside = tmp_path / "secret.yaml"
    outside.write_text(LIVE_TEXT, encoding="utf-8")
    for name in ("../secret.yaml", str(outside), "notes.txt", ""):
        assert candidate_rules(folder, name, files) is None
        assert diff_files(folder, name, "candidate.jsonl", None, files) is None
    assert diff_files(folder, "live.jsonl", "candidate.jsonl", "../outcomes.jsonl", files) is None


def test_the_diff_is_the_labs(tmp_path: Path) -> None:
    folder = lab(tmp_path)
    diff = diff_files(folder, "live.jsonl", "candidate.jsonl", "outcomes.jsonl", list_files(folder))
    assert diff is not None and diff.quality is not None
    assert (diff.live, diff.candidate, diff.leads) == ("live v1", "candidate v2", 300)
    assert diff.appeared  # the candidate weighs pricing pages up


def test_the_rules_file_is_followed_and_an_invalid_one_keeps_the_last(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(LIVE_TEXT, encoding="utf-8")
    watch = RulesWatch(path)
    first = watch.get()
    assert first.rules.version == "b2b-2026.11.1" and first.problems == ()
    assert watch.get() is first  # unchanged file: not read again
    path.write_text(LIVE_TEXT.replace("version: ", "versio: "), encoding="utf-8")
    os.utime(path, ns=(1, 1))
    kept = watch.get()
    assert kept.rules is first.rules and kept.text == LIVE_TEXT
    assert kept.problems and all(p.startswith(f"{path}: ") for p in kept.problems)
    path.write_text(LIVE_TEXT.replace("b2b-2026.11.1", "b2b-2027.1.0"), encoding="utf-8")
    os.utime(path, ns=(2, 2))
    assert watch.get().rules.version == "b2b-2027.1.0" and watch.get().problems == ()
    never = tmp_path / "never.yaml"
    never.write_text("tiers: [", encoding="utf-8")
    with pytest.raises(RulesError):
        RulesWatch(never).get()
