"""The rules file's `outcomes:` section: defaults, compiled values, located errors (YAML, TOML)."""

from __future__ import annotations

import math
import re

import pytest

from streamscore.errors import RulesError
from streamscore.scoring.outcome_rules import (
    DEFAULT_BAND_STEP,
    DEFAULT_FINE_BUCKETS,
    RecyclePolicy,
)
from streamscore.scoring.rules import load_rules, parse_rules_text
from tests.conftest import RULES_FILE

BASE = """\
version: t-1
decay:
  half_life: 1h
engagement:
  - id: view
    when:
      type: page_view
    points: 1
tiers:
  - name: cold
  - name: warm
    enter: 10
    exit: 5
  - name: hot
    enter: 30
    exit: 20
  - name: fire
    enter: 60
handoff:
  tier: hot
  rearm_below: 15
"""

SECTION = """\
outcomes:
  sla:
    hot: 1h
    fire: 15m
  recycle:
    action: disarm
    rearm_below: 12
  score_bands:
    - 30
    - 45
    - 60
  attribution_window: 30d
"""

TOML = """\
version = "t-1"
[decay]
half_life = "1h"
[[engagement]]
id = "view"
when = { type = "page_view" }
points = 1
[[tiers]]
name = "cold"
[[tiers]]
name = "hot"
enter = 30
exit = 20
[handoff]
tier = "hot"
[outcomes.sla]
hot = "1h"
lukewarm = "2d"
[outcomes.recycle]
action = "subtract"
points = 25
"""


def problems_of(text: str, source: str = "rules.yaml") -> list[str]:
    with pytest.raises(RulesError) as info:
        parse_rules_text(text, source)
    return info.value.problems


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_without_the_section_the_defaults_apply() -> None:
    rules = parse_rules_text(BASE, "rules.yaml")
    out = rules.outcomes
    assert out.sla_ms == {}
    assert out.recycle is None
    assert out.attribution_window_ms == 90 * 86400_000
    assert out.fine_bands
    # fine buckets from the handoff tier's exit threshold (hot: 20) up
    assert out.band_edges[0] == 20
    assert len(out.band_edges) == DEFAULT_FINE_BUCKETS + 1
    assert out.band_edges[1] - out.band_edges[0] == DEFAULT_BAND_STEP
    assert out.tiers == ("cold", "warm", "hot", "fire")
    assert out.sla_deadline_ms("hot", 1000) is None


def test_the_section_compiles() -> None:
    out = parse_rules_text(BASE + SECTION, "rules.yaml").outcomes
    assert dict(out.sla_ms) == {"hot": 3600_000, "fire": 900_000}
    assert out.sla_deadline_ms("fire", 1000) == 901_000
    assert out.sla_deadline_ms("warm", 1000) is None  # a tier without a deadline has no SLA
    assert out.recycle == RecyclePolicy("disarm", 0.0, 12.0)
    assert out.band_edges == (30.0, 45.0, 60.0)
    assert not out.fine_bands
    assert out.attribution_window_ms == 30 * 86400_000


def test_disarm_defaults_to_the_handoff_rearm_level() -> None:
    text = BASE + "outcomes:\n  recycle:\n    action: disarm\n"
    assert parse_rules_text(text, "r.yaml").outcomes.recycle == RecyclePolicy("disarm", 0, 15.0)


def test_toml_section_and_located_tier_error() -> None:
    problems = problems_of(TOML, "rules.toml")
    assert problems == [
        f"line {line_of(TOML, 'lukewarm')}: outcomes.sla.lukewarm: 'lukewarm' is not a tier "
        "(cold, hot)"
    ]
    fixed = TOML.replace('lukewarm = "2d"\n', "")
    recycle = parse_rules_text(fixed, "rules.toml").outcomes.recycle
    assert recycle == RecyclePolicy("subtract", 25.0, 20.0)


@pytest.mark.parametrize(
    ("section", "needle", "path", "message"),
    [
        ("  sla:\n    hot: soon\n", "hot: soon", "outcomes.sla.hot", "expected a duration"),
        ("  sla:\n    hot: 0s\n", "hot: 0s", "outcomes.sla.hot", "must be positive"),
        ("  sla:\n    tepid: 1h\n", "tepid", "outcomes.sla.tepid", "is not a tier"),
        ("  recycle:\n    action: subtract\n", "recycle:", "outcomes.recycle", "needs `points`"),
        ("  recycle:\n    action: disarm\n    points: 5\n", "recycle:", "outcomes.recycle",
         "points only apply"),
        ("  recycle:\n    action: subtract\n    points: 5\n    rearm_below: 3\n", "recycle:",
         "outcomes.recycle", "rearm_below only applies"),
        ("  recycle:\n    action: shred\n", "action: shred", "outcomes.recycle.action", "disarm"),
        ("  recycle:\n    action: subtract\n    points: -5\n", "points: -5",
         "outcomes.recycle.points", "greater than 0"),
        ("  recycle:\n    action: disarm\n    rearm_below: 25\n", "rearm_below: 25",
         "outcomes.recycle.rearm_below", "exit threshold"),
        ("  score_bands:\n    - 50\n    - 40\n", "score_bands", "outcomes.score_bands", "rise"),
        ("  score_bands: []\n", "score_bands", "outcomes.score_bands", "at least 1"),
        ("  attribution_window: forever\n", "attribution_window", "outcomes.attribution_window",
         "expected a duration"),
        ("  surprise: 1\n", "surprise", "outcomes.surprise", "Extra inputs"),
    ],
)  # fmt: skip
def test_errors_are_located(section: str, needle: str, path: str, message: str) -> None:
    text = BASE + "outcomes:\n" + section
    problems = problems_of(text)
    pattern = re.compile(
        rf"^line {line_of(text, needle)}: {re.escape(path)}\S*: .*{re.escape(message)}"
    )
    assert any(pattern.search(p) for p in problems), problems


def test_infinite_band_edge_is_refused() -> None:
    problems = problems_of(BASE + "outcomes:\n  score_bands: [1, .inf]\n")
    assert any("finite" in p for p in problems), problems


def test_example_rules_have_an_outcomes_section() -> None:
    out = load_rules(RULES_FILE).outcomes
    assert out.sla_ms["hot"] == 4 * 3600_000
    assert out.recycle is not None and out.recycle.action == "disarm"
    assert out.fine_bands and math.isfinite(out.band_edges[0])
