"""The `streamscore` command as a user runs it: exit codes and what it prints where."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO_ROOT, RULES_FILE, run_cli

INVALID_RULES = """\
version: bad-1
decay:
  half_life: 1 fortnight
engagement:
  - id: view
    when: {type: page_vew}
    points: 1
tiers:
  - name: cold
  - name: warm
    enter: 10
handoff:
  tier: warm
"""


def test_rules_check_accepts_the_example_rules() -> None:
    result = run_cli("rules", "check", str(RULES_FILE.relative_to(REPO_ROOT)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("examples/rules.yaml: OK (version b2b-")
    assert result.stderr == ""


def test_rules_check_prints_every_error_with_file_line_and_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(INVALID_RULES, encoding="utf-8")
    result = run_cli("rules", "check", str(RULES_FILE), str(bad))
    assert result.returncode != 0
    assert f"{RULES_FILE}: OK" in result.stdout  # the good file is still checked
    errors = result.stderr.splitlines()
    pattern = re.compile(rf"^{re.escape(str(bad))}: line (\d+): (\S+): .+")
    found = {(int(m.group(1)), m.group(2)) for m in map(pattern.match, errors) if m}
    line = {
        needle: INVALID_RULES[: INVALID_RULES.index(needle)].count("\n") + 1
        for needle in ("1 fortnight", "page_vew")
    }
    expected = {(line["1 fortnight"], "decay.half_life"), (line["page_vew"], "engagement[0].when")}
    assert found == expected, result.stderr
    assert len(errors) == 2


def test_an_invalid_setting_exits_2_naming_the_variable() -> None:
    result = run_cli("lead", "x", STREAMSCORE_TOPIC_PARTITIONS="0")
    assert result.returncode == 2
    assert "STREAMSCORE_TOPIC_PARTITIONS" in result.stderr
    assert "topic_partitions" in result.stderr
    assert "Traceback" not in result.stderr


def test_console_refuses_to_start_without_a_token() -> None:
    result = run_cli("console")
    assert result.returncode == 2
    assert "console_token is not set" in result.stderr
    assert "STREAMSCORE_CONSOLE_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
    assert "console url" not in result.stdout
