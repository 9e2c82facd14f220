"""The README documents every collector setting, metric and the track topic, with true defaults."""

from __future__ import annotations

import re

from streamscore.config import Settings
from streamscore.metrics import COLLECTOR_METRIC_NAMES
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
CONFIGURATION = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
METRICS = README.split("## Metrics", 1)[1].split("\n## ", 1)[0]


def test_every_collector_setting_has_a_row() -> None:
    rows = set(re.findall(r"^\| `([a-z_0-9]+)` \|", CONFIGURATION, re.M))
    wanted = {n for n in Settings.model_fields if n.startswith("collector_")} | {"topic_track"}
    assert not wanted - rows, f"settings missing from the README's table: {wanted - rows}"


def test_every_collector_metric_has_a_row() -> None:
    missing = [m for m in COLLECTOR_METRIC_NAMES if f"| `{m}` |" not in METRICS]
    assert not missing, f"metrics missing from the README's Metrics table: {missing}"


def test_the_defaults_in_the_rows_are_the_settings_defaults() -> None:
    rows = re.findall(r"^\| `(collector_[a-z_]+)` \| `([^`]*)` \|", CONFIGURATION, re.M)
    for name, default in rows:
        value = Settings.model_fields[name].default
        shown = str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(
            value, float) else str(value)  # fmt: skip
        assert default == shown, name
