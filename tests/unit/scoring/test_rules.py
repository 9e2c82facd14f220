"""Rules loading: the example file uses every feature; each invalid file names path and line."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamscore.errors import RulesError
from streamscore.events.types import EventType
from streamscore.scoring.durations import parse_duration_s
from streamscore.scoring.engine import DISQUALIFY, REQUALIFY
from streamscore.scoring.rules import (
    BANT_CRITERIA,
    KNOWN_EVENT_TYPES,
    load_rules,
    parse_rules_text,
)
from tests.conftest import RULES_FILE

# A valid rules file in block style, so each offending key sits on a line of its own.
BASE_YAML = """\
version: t-1
decay:
  half_life: 1h
attributes:
  title:
    from: [traits.title]
    transform: lower
engagement:
  - id: view
    when:
      type: page_view
    points: 1
  - id: pricing
    when:
      type: page_view
      properties.path:
        prefix: /pricing
    points: 5
    cap:
      points: 15
      window: 1d
fit:
  - id: exec
    attribute: title
    when:
      regex: chief
    points: 10
tiers:
  - name: cold
  - name: warm
    enter: 10
    exit: 5
  - name: hot
    enter: 30
    exit: 20
handoff:
  tier: hot
  rearm_below: 15
"""

# The same rules as TOML.
BASE_TOML = """\
version = "t-1"

[decay]
half_life = "1h"

[attributes.title]
from = ["traits.title"]
transform = "lower"

[[engagement]]
id = "view"
when = { type = "page_view" }
points = 1

[[engagement]]
id = "pricing"
when = { type = "page_view", "properties.path" = { prefix = "/pricing" } }
points = 5
cap = { points = 15, window = "1d" }

[[fit]]
id = "exec"
attribute = "title"
when = { regex = "chief" }
points = 10

[[tiers]]
name = "cold"

[[tiers]]
name = "warm"
enter = 10
exit = 5

[[tiers]]
name = "hot"
enter = 30
exit = 20

[handoff]
tier = "hot"
rearm_below = 15
"""


def mutate(text: str, old: str, new: str, count: int = 1) -> str:
    """Replace `old` (which must occur) by `new`, so a test cannot silently edit nothing."""
    assert old in text, f"{old!r} not in the base text"
    return text.replace(old, new, count)


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the `occurrence`-th line containing `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) >= occurrence, f"{needle!r} occurs {len(hits)} times"
    return hits[occurrence - 1]


def problems_of(text: str, source: str = "rules.yaml") -> list[str]:
    with pytest.raises(RulesError) as info:
        parse_rules_text(text, source)
    assert info.value.source == source
    assert info.value.problems, "a RulesError must list at least one problem"
    return info.value.problems


def located(problems: list[str], path: str, lines: set[int]) -> list[str]:
    """The problems of the form `line N: <path>...: message` with N in `lines`."""
    pattern = re.compile(r"^line (\d+): (\S+): ")
    out = []
    for problem in problems:
        m = pattern.match(problem)
        if m and int(m.group(1)) in lines and m.group(2).startswith(path):
            out.append(problem)
    return out


def test_base_files_are_valid_and_yaml_and_toml_compile_alike() -> None:
    from_yaml = parse_rules_text(BASE_YAML, "rules.yaml")
    from_toml = parse_rules_text(BASE_TOML, "rules.toml")
    assert from_yaml.script_config() == from_toml.script_config()
    assert from_yaml.rule_ids == from_toml.rule_ids == ("view", "pricing")


def test_known_event_types_match_the_event_contract() -> None:
    assert set(KNOWN_EVENT_TYPES) == {t.value for t in EventType}


# ------------------------------------------------------------------ the example file


@pytest.fixture(scope="module")
def example_raw() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return raw


def test_example_rules_load_with_every_engagement_and_fit_rule(
    example_raw: dict[str, Any],
) -> None:
    rules = load_rules(RULES_FILE)
    assert rules.version == example_raw["version"]
    assert rules.source == str(RULES_FILE)
    assert list(rules.rule_ids) == [r["id"] for r in example_raw["engagement"]]
    fit_ids = [f.id for a in rules.attributes for f in a.fit_rules]
    assert sorted(fit_ids) == sorted(r["id"] for r in example_raw["fit"])
    assert [a.name for a in rules.attributes] == list(example_raw["attributes"])
    assert rules.half_life_s == parse_duration_s(example_raw["decay"]["half_life"])


def test_example_rules_use_every_feature() -> None:
    rules = load_rules(RULES_FILE)
    engagement = rules.engagement
    # outcomes: an SLA and a recycle action
    assert rules.outcomes.sla_ms and rules.outcomes.recycle is not None
    # caps, negative points, disqualify and requalify
    assert any(r.cap_points > 0 and r.cap_window_s > 0 for r in engagement)
    assert any(r.points < 0 for r in engagement)
    assert any(r.flag == DISQUALIFY for r in engagement)
    assert any(r.flag == REQUALIFY for r in engagement)
    # fit: points of both signs, disqualification by attribute, numeric and string attributes
    fit_rules = [f for a in rules.attributes for f in a.fit_rules]
    assert any(f.points > 0 for f in fit_rules)
    assert any(f.points < 0 for f in fit_rules)
    assert any(f.disqualify for f in fit_rules)
    assert any(a.numeric for a in rules.attributes)
    assert {a.transform for a in rules.attributes} >= {"lower", "email_domain"}
    # grades A >= B >= C, all finite
    a, b, c = rules.grade_thresholds
    assert all(math.isfinite(g) for g in (a, b, c)) and a >= b >= c
    # BANT: all four criteria present
    bits = 0
    for attr in rules.attributes:
        for bit, _ in attr.bant_tests:
            bits |= bit
    assert bits == (1 << len(BANT_CRITERIA)) - 1
    # floor and ceiling
    assert math.isfinite(rules.floor) and math.isfinite(rules.ceiling)
    assert rules.floor < rules.ceiling
    # hysteresis: at least one tier exits below where it enters; thresholds rise
    above_floor = rules.tiers[1:]
    assert any(t.exit < t.enter for t in above_floor)
    assert [t.enter for t in above_floor] == sorted(t.enter for t in above_floor)
    # handoff gates
    assert 0 < rules.handoff_tier < len(rules.tiers)
    assert rules.min_grade < 4 and rules.min_bant > 0
    assert rules.rearm_below < rules.tiers[rules.handoff_tier].exit


# ------------------------------------------------------------------ located errors


def test_unknown_event_type_is_reported_at_the_rule() -> None:
    text = mutate(
        BASE_YAML,
        "      type: page_view\n      properties.path:",
        "      type: page_vew\n      properties.path:",
    )
    problems = problems_of(text)
    when_line = line_of(text, "    when:", occurrence=2)
    hits = located(problems, "engagement[1].when", {when_line, line_of(text, "page_vew")})
    assert hits, problems
    assert "page_vew" in hits[0]


def test_bad_regex_is_reported_at_its_condition() -> None:
    text = mutate(BASE_YAML, "        prefix: /pricing", '        regex: "(["')
    problems = problems_of(text)
    lines = {line_of(text, 'regex: "(["'), line_of(text, "properties.path:")}
    hits = located(problems, "engagement[1].when.properties.path", lines)
    assert hits, problems
    assert "regular expression" in hits[0]


def test_bad_regex_in_a_fit_rule_is_reported_at_its_line() -> None:
    text = mutate(BASE_YAML, "      regex: chief", '      regex: "chief("')
    problems = problems_of(text)
    assert located(problems, "fit[0].when", {line_of(text, 'regex: "chief("')}), problems


def test_duplicate_rule_ids_are_reported_at_the_repeated_id() -> None:
    text = mutate(BASE_YAML, "  - id: pricing", "  - id: view")
    problems = problems_of(text)
    hits = located(problems, "engagement[1]", {line_of(text, "- id: view", occurrence=2)})
    assert hits, problems
    assert "view" in hits[0]


def test_tiers_whose_enter_does_not_rise_are_reported_at_the_tier() -> None:
    text = mutate(BASE_YAML, "    enter: 30\n    exit: 20", "    enter: 8\n    exit: 6")
    text = mutate(text, "rearm_below: 15", "rearm_below: 5")
    problems = problems_of(text)
    lines = {line_of(text, "name: hot"), line_of(text, "enter: 8")}
    hits = located(problems, "tiers[2]", lines)
    assert hits, problems
    assert "rise" in hits[0]


def test_exit_above_enter_is_reported_at_the_tier() -> None:
    text = mutate(BASE_YAML, "    exit: 5", "    exit: 12")
    problems = problems_of(text)
    lines = {line_of(text, "name: warm"), line_of(text, "exit: 12")}
    hits = located(problems, "tiers[1]", lines)
    assert hits, problems
    assert "exit" in hits[0]


def test_unknown_handoff_tier_is_reported_at_handoff_tier() -> None:
    text = mutate(BASE_YAML, "  tier: hot", "  tier: lukewarm")
    problems = problems_of(text)
    hits = located(problems, "handoff.tier", {line_of(text, "tier: lukewarm")})
    assert hits, problems
    assert "lukewarm" in hits[0]


def test_rearm_above_the_handoff_exit_is_reported_at_rearm_below() -> None:
    text = mutate(BASE_YAML, "rearm_below: 15", "rearm_below: 25")
    problems = problems_of(text)
    assert located(problems, "handoff.rearm_below", {line_of(text, "rearm_below: 25")}), problems


def test_fit_rule_on_an_undefined_attribute_is_reported_at_its_attribute() -> None:
    text = mutate(BASE_YAML, "    attribute: title", "    attribute: seniority")
    problems = problems_of(text)
    hits = located(problems, "fit[0].attribute", {line_of(text, "attribute: seniority")})
    assert hits, problems
    assert "seniority" in hits[0]


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        ("  half_life: 1h", "  half_life: 1 fortnight", "decay.half_life"),
        ("      window: 1d", "      window: 2 days", "engagement[1].cap.window"),
        ("  half_life: 1h", "  half_life: -3", "decay.half_life"),
    ],
)
def test_bad_duration_is_reported_at_its_line(old: str, new: str, path: str) -> None:
    text = mutate(BASE_YAML, old, new)
    problems = problems_of(text)
    hits = located(problems, path, {line_of(text, new.strip())})
    assert hits, problems
    assert "duration" in hits[0]


@pytest.mark.parametrize(
    ("old", "new", "path", "needle"),
    [
        ("    points: 1\n", "    points: lots\n", "engagement[0].points", "points: lots"),
        ("  - id: view", "  - id: View", "engagement[0].id", "id: View"),
        ("    transform: lower", "    transform: upper", "attributes.title.transform", "upper"),
        ("      regex: chief", "      regx: chief", "fit[0].when", "regx: chief"),
        ("  tier: hot", "  tier: hot\n  min_bant: 5", "handoff.min_bant", "min_bant: 5"),
    ],
)
def test_field_errors_are_reported_with_path_and_line(
    old: str, new: str, path: str, needle: str
) -> None:
    text = mutate(BASE_YAML, old, new)
    problems = problems_of(text)
    assert located(problems, path, {line_of(text, needle)}), problems


def test_malformed_yaml_reports_line_and_column() -> None:
    text = mutate(BASE_YAML, "    from: [traits.title]", "    from: [traits.title")
    problems = problems_of(text)
    assert len(problems) == 1
    m = re.match(r"^line (\d+), column (\d+): not valid YAML", problems[0])
    assert m, problems
    # PyYAML notices the unclosed flow sequence at the next `key:` it cannot accept.
    assert line_of(text, "[traits.title") <= int(m.group(1)) <= line_of(text, "transform: lower")


def test_top_level_must_be_a_mapping() -> None:
    assert "mapping" in problems_of("- just\n- a list\n")[0]


def test_toml_validation_errors_name_the_field() -> None:
    text = mutate(BASE_TOML, 'half_life = "1h"', 'half_life = "1 fortnight"')
    text = mutate(text, 'when = { type = "page_view" }', 'when = { type = "page_vew" }')
    problems = problems_of(text, "rules.toml")
    assert len(problems) == 2, problems
    half_life = f"line {line_of(text, 'half_life =')}: decay.half_life: "
    when = f"line {line_of(text, 'page_vew')}: engagement[0].when: "
    assert any(p.startswith(half_life) and "duration" in p for p in problems), problems
    assert any(p.startswith(when) and "page_vew" in p for p in problems), problems


def test_toml_errors_point_past_multi_line_values_and_into_tables() -> None:
    """Multi-line strings and arrays hide nothing: keys after them get their own lines."""
    text = mutate(
        BASE_TOML,
        'id = "exec"',
        'description = """spans\n[[fit]]\nlines"""\ntags = [\n  "a[",\n]\nid = "exec"',
    )
    text = mutate(text, "points = 10", "points = 10\nbogus = 1")
    text = mutate(text, "enter = 30", 'enter = "lots"')
    problems = problems_of(text, "rules.toml")
    assert f"line {line_of(text, 'bogus')}: fit[0].bogus: " in "\n".join(problems), problems
    assert any(p.startswith(f"line {line_of(text, 'lots')}: tiers[2].enter") for p in problems)


def test_malformed_toml_reports_line_and_column() -> None:
    text = mutate(BASE_TOML, "[decay]", "[decay")
    (problem,) = problems_of(text, "rules.toml")
    assert "not valid TOML" in problem
    assert f"line {line_of(text, '[decay')}, column" in problem


# ------------------------------------------------------------------ all problems at once


def test_two_field_errors_give_two_located_problems() -> None:
    text = mutate(BASE_YAML, "  half_life: 1h", "  half_life: soon")
    text = mutate(text, "    points: 1\n", "    points: lots\n")
    problems = problems_of(text)
    assert len(problems) == 2, problems
    assert located(problems, "decay.half_life", {line_of(text, "half_life: soon")})
    assert located(problems, "engagement[0].points", {line_of(text, "points: lots")})


def test_two_cross_check_errors_give_two_located_problems() -> None:
    text = mutate(BASE_YAML, "  - id: pricing", "  - id: view")
    text = mutate(text, "    attribute: title", "    attribute: seniority")
    problems = problems_of(text)
    assert len(problems) == 2, problems
    assert located(problems, "engagement[1]", {line_of(text, "- id: view", occurrence=2)})
    assert located(problems, "fit[0].attribute", {line_of(text, "attribute: seniority")})


def test_load_rules_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(mutate(BASE_YAML, "  half_life: 1h", "  half_life: soon"), encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(RulesError) as info:
        load_rules(missing)
    assert info.value.problems[0].startswith("cannot read")


def test_type_accepts_the_matcher_form_of_a_list() -> None:
    # `type: [a, b]` and `type: {in: [a, b]}` are the same matcher everywhere else.
    as_list = mutate(
        BASE_YAML,
        "      type: page_view\n    points: 1",
        "      type: [page_view, email_open]\n    points: 1",
    )
    as_in = mutate(
        BASE_YAML,
        "      type: page_view\n    points: 1",
        "      type: {in: [page_view, email_open]}\n    points: 1",
    )
    rules_list = parse_rules_text(as_list, "rules.yaml")
    rules_in = parse_rules_text(as_in, "rules.yaml")
    for event_type in KNOWN_EVENT_TYPES:
        assert [r.id for r in rules_in.by_type[event_type]] == [
            r.id for r in rules_list.by_type[event_type]
        ]
    typo = mutate(
        BASE_YAML,
        "      type: page_view\n    points: 1",
        "      type: {in: [page_view, email_opn]}\n    points: 1",
    )
    problems = problems_of(typo)
    assert located(
        problems, "engagement[0].when", {line_of(typo, "email_opn"), line_of(typo, "when:")}
    )
    assert "email_opn" in problems[0]


# ------------------------------------------------------------------ decay.penalties


def test_decay_penalties_is_off_unless_set_in_yaml_or_toml() -> None:
    assert parse_rules_text(BASE_YAML, "rules.yaml").decay_penalties is False
    on_yaml = mutate(BASE_YAML, "  half_life: 1h\n", "  half_life: 1h\n  penalties: true\n")
    on_toml = mutate(BASE_TOML, 'half_life = "1h"\n', 'half_life = "1h"\npenalties = true\n')
    assert parse_rules_text(on_yaml, "rules.yaml").decay_penalties is True
    assert parse_rules_text(on_toml, "rules.toml").decay_penalties is True


def test_a_non_boolean_decay_penalties_is_reported_at_its_line() -> None:
    text = mutate(BASE_YAML, "  half_life: 1h\n", "  half_life: 1h\n  penalties: sometimes\n")
    problems = problems_of(text)
    assert located(problems, "decay.penalties", {line_of(text, "penalties: sometimes")}), problems


# ------------------------------------------------------------------ the `event` field (track)


def test_event_conditions_are_for_track_events_only() -> None:
    base = RULES_FILE.read_text()
    good = base.replace(
        "engagement:\n",
        "engagement:\n"
        "  - {id: form_sales, when: {event: Form Submitted, properties.form: contact-sales},"
        " points: 20}\n"
        "  - {id: liked, when: {type: track, event: LinkedIn Post Liked}, points: 3}\n",
        1,
    )
    rules = parse_rules_text(good, "good.yaml")
    # The example's own track rules name these too, and one more.
    names = ("Form Submitted", "LinkedIn Post Liked", "LinkedIn Post Shared")
    assert sorted(rules.track_names) == sorted(names)
    assert [r.id for r in rules.by_type["track"]][:2] == ["form_sales", "liked"]
    assert all(r.id != "form_sales" for r in rules.by_type["page_view"])
    for bad, message in (
        ("{event: X, type: page_view}", "matches custom track events only"),
        ("{event.name: X}", "has no fields"),
    ):
        text = base.replace(
            "engagement:\n", f"engagement:\n  - {{id: bad, when: {bad}, points: 1}}\n", 1
        )
        with pytest.raises(RulesError) as info:
            parse_rules_text(text, "bad.yaml")
        assert any(message in p for p in info.value.problems), info.value.problems
        assert any(p.startswith("line ") for p in info.value.problems)
