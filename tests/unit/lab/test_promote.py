"""Promotion and rollback on real files: atomic rename, refusals, history and log kept."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from streamscore.errors import RulesError
from streamscore.lab.errors import PromotionError
from streamscore.lab.promote import HISTORY_DIR, LOG_NAME, kept_versions, promote, rollback
from streamscore.scoring.rules import load_rules
from tests.conftest import RULES_FILE

NOW = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
LIVE_TEXT = RULES_FILE.read_text(encoding="utf-8")
LIVE_VERSION = "b2b-2026.11.1"


def candidate_text(version: str = "b2b-2026.11.2") -> str:
    """The example rules with a new version, pricing_page at 12 points, a rule added and one
    removed, and the hot tier entered at 95."""
    text = LIVE_TEXT.replace(f'version: "{LIVE_VERSION}"', f'version: "{version}"')
    text = text.replace(
        "  - id: pricing_page\n    when: {type: page_view, properties.path: {prefix: /pricing}}\n"
        "    points: 10",
        "  - id: pricing_page\n    when: {type: page_view, properties.path: {prefix: /pricing}}\n"
        "    points: 12",
    )
    text = text.replace("  - id: careers_page\n", "  - id: jobs_page\n")
    return text.replace("    enter: 90\n", "    enter: 95\n")


@pytest.fixture
def live(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(LIVE_TEXT, encoding="utf-8")
    return path


def test_promote_replaces_atomically_and_keeps_the_old_version(live: Path, tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(candidate_text(), encoding="utf-8")
    before = os.stat(live)
    done = promote(candidate, live, NOW)
    after = os.stat(live)
    assert after.st_ino != before.st_ino  # a rename, not a rewrite in place
    assert after.st_mtime_ns != before.st_mtime_ns  # hot reload polls the modification time
    assert live.read_text(encoding="utf-8") == candidate_text()
    assert load_rules(live).version == "b2b-2026.11.2"
    assert done.kept == live.parent / HISTORY_DIR / f"rules.{LIVE_VERSION}.yaml"
    assert done.kept.read_text(encoding="utf-8") == LIVE_TEXT
    # no temporary file is left behind
    assert sorted(p.name for p in live.parent.iterdir()) == [
        "candidate.yaml",
        HISTORY_DIR,
        "rules.yaml",
    ]
    assert done.change.lines() == [
        f"version: {LIVE_VERSION} -> b2b-2026.11.2",
        "rules added: jobs_page",
        "rules removed: careers_page",
        "points: pricing_page 10 -> 12",
        "also changed: tiers",
    ]
    log = [orjson.loads(line) for line in (done.kept.parent / LOG_NAME).read_bytes().splitlines()]
    assert log == [
        {
            "time": "2026-11-20T09:30:00+00:00",
            "action": "promote",
            "from_version": LIVE_VERSION,
            "to_version": "b2b-2026.11.2",
            "kept": f"rules.{LIVE_VERSION}.yaml",
            "source": str(candidate),
        }
    ]


def test_an_invalid_candidate_is_refused_with_located_errors(live: Path, tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(
        candidate_text().replace("    points: 12", "    points: twelve"),
        encoding="utf-8",
    )
    with pytest.raises(RulesError) as caught:
        promote(candidate, live, NOW)
    assert caught.value.source == str(candidate)
    assert any(p.startswith("line 33: engagement[1].points") for p in caught.value.problems), (
        caught.value.problems
    )
    assert live.read_text(encoding="utf-8") == LIVE_TEXT
    assert not (live.parent / HISTORY_DIR).exists()


def test_same_version_and_symlinks_are_refused(live: Path, tmp_path: Path) -> None:
    same = tmp_path / "same.yaml"
    same.write_text(candidate_text(LIVE_VERSION), encoding="utf-8")
    with pytest.raises(PromotionError, match=r"has the live version 'b2b-2026\.11\.1'"):
        promote(same, live, NOW)
    assert live.read_text(encoding="utf-8") == LIVE_TEXT
    link = tmp_path / "link.yaml"
    link.symlink_to(live)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(candidate_text(), encoding="utf-8")
    with pytest.raises(PromotionError, match="symbolic link"):
        promote(candidate, link, NOW)


def test_a_failed_rename_leaves_the_live_file_and_no_temporary(
    live: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(candidate_text(), encoding="utf-8")
    real_replace = os.replace

    def failing_replace(src: str, dst: str | Path) -> None:
        if Path(dst) == live:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        promote(candidate, live, NOW)
    assert live.read_text(encoding="utf-8") == LIVE_TEXT
    assert not [p for p in live.parent.iterdir() if p.name.endswith(".tmp")]


def test_rollback_goes_back_and_forth_through_history(live: Path, tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(candidate_text(), encoding="utf-8")
    promote(candidate, live, NOW)
    back = rollback(live, NOW)
    assert back.action == "rollback"
    assert live.read_text(encoding="utf-8") == LIVE_TEXT
    assert back.change.lines()[0] == f"version: b2b-2026.11.2 -> {LIVE_VERSION}"
    assert set(kept_versions(live)) == {LIVE_VERSION, "b2b-2026.11.2"}
    again = rollback(live, NOW)  # the version live before the rollback
    assert load_rules(live).version == "b2b-2026.11.2"
    assert again.change.old_version == LIVE_VERSION
    to = rollback(live, NOW, to_version=LIVE_VERSION)
    assert to.change.new_version == LIVE_VERSION
    with pytest.raises(PromotionError, match=r"'v9' is not kept .* \(kept: b2b-2026.11.1, b2b"):
        rollback(live, NOW, to_version="v9")
    actions = [
        orjson.loads(line)["action"]
        for line in (live.parent / HISTORY_DIR / LOG_NAME).read_bytes().splitlines()
    ]
    assert actions == ["promote", "rollback", "rollback", "rollback"]


def test_rollback_without_a_recorded_promotion_says_what_is_kept(live: Path) -> None:
    with pytest.raises(PromotionError, match="no promotion to the live version"):
        rollback(live, NOW)


def test_a_version_kept_twice_with_different_text_keeps_both(live: Path, tmp_path: Path) -> None:
    first = tmp_path / "c1.yaml"
    first.write_text(candidate_text("v2"), encoding="utf-8")
    promote(first, live, NOW)
    # someone edits the live file by hand without changing its version
    live.write_text(candidate_text("v2").replace("enter: 95", "enter: 96"), encoding="utf-8")
    second = tmp_path / "c2.yaml"
    second.write_text(candidate_text("v3"), encoding="utf-8")
    promote(second, live, NOW)
    promote(first, live, NOW)  # v2 again, as first written
    history = live.parent / HISTORY_DIR
    assert (history / "rules.v2.yaml").read_text(encoding="utf-8").count("enter: 96") == 1
    # the newest copy of a version wins a rollback; both are kept
    assert kept_versions(live)["v3"] == history / "rules.v3.yaml"
    promote(second, live, NOW)
    assert (history / "rules.v2~1.yaml").read_text(encoding="utf-8") == candidate_text("v2")
    assert kept_versions(live)["v2"] == history / "rules.v2~1.yaml"


def test_a_first_promotion_creates_the_live_file(tmp_path: Path) -> None:
    live = tmp_path / "rules.yaml"
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(LIVE_TEXT, encoding="utf-8")
    done = promote(candidate, live, NOW)
    assert done.kept is None
    assert done.change.lines()[0] == f"version: (none) -> {LIVE_VERSION}"
    assert live.read_text(encoding="utf-8") == LIVE_TEXT
    assert oct(live.stat().st_mode & 0o777) == oct(0o644)
