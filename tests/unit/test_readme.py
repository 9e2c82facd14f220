"""The README documents every setting and metric, and its test command is the one CI runs."""

from __future__ import annotations

import re

from streamscore.config import Settings
from streamscore.metrics import METRIC_NAMES
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_configuration_table() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_0-9]+)`", table))
    missing = [name for name in Settings.model_fields if name not in documented]
    assert not missing, f"settings missing from the README table: {missing}"


def test_every_metric_is_listed() -> None:
    section = README.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    missing = [m for m in METRIC_NAMES if f"`{m}`" not in section]
    assert not missing, f"metrics missing from the README: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"^make (\w+)", README.split("```bash", 1)[1].split("```", 1)[0], re.M)
    assert commands == ["demo", "test"]
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.strip().splitlines()[-1] == "make test"
