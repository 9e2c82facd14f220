"""A learned model written as a rules file: the same rules with new points and a new version.

Everything else (ids, conditions, caps' windows, attributes, fit, BANT, grades, tiers, handoff
gates, outcomes) is kept. A YAML file is edited in place, scalar by scalar, so its comments and
layout survive; a TOML file, or a change of structure (a cap dropped), is written as fresh YAML.
Either way the result is checked to load to exactly the intended data and to pass the rules'
validation.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Sequence
from typing import Any

import yaml

from streamscore.lab.learn import Weight
from streamscore.scoring.rules import parse_rules_text


def _points(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def candidate_data(data: dict[str, Any], weights: Sequence[Weight], version: str) -> dict[str, Any]:
    """The rules data with learned points (and scaled or dropped caps) and a new version."""
    learned = {w.name: w for w in weights if w.coefficient is not None and w.kind != "bant"}
    out = copy.deepcopy(data)
    out["version"] = version
    for section in ("engagement", "fit"):
        for rule in out.get(section) or []:
            weight = learned.get(rule.get("id"))
            if weight is None or weight.new_points is None:
                continue
            rule["points"] = _points(weight.new_points)
            if "cap" in rule:
                if weight.new_cap_points is None:
                    del rule["cap"]
                else:
                    rule["cap"]["points"] = _points(weight.new_cap_points)
    return out


def candidate_rules_text(
    rules_text: str, source: str, weights: Sequence[Weight], version: str, header: str
) -> str:
    """The candidate rules file's text; `header` becomes a comment at its top."""
    is_yaml = not source.endswith(".toml")
    data = yaml.safe_load(rules_text) if is_yaml else tomllib.loads(rules_text)
    wanted = candidate_data(data, weights, version)
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    text = None
    if is_yaml:
        edited = _edit_in_place(rules_text, data, wanted)
        if edited is not None and yaml.safe_load(edited) == wanted:
            text = comment + edited
    if text is None:
        dumped = yaml.safe_dump(wanted, sort_keys=False, allow_unicode=True, width=100)
        text = comment + "# (written afresh: the original's comments and layout are not kept)\n"
        text += dumped
    parse_rules_text(text, "candidate.yaml")  # a RulesError here is a bug in this module
    return text


def _edit_in_place(text: str, original: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Replace the version and points scalars where they are; None when structure must change."""
    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode):
        return None
    edits: list[tuple[int, int, str]] = []
    top = _mapping(root)
    version = top.get("version")
    if not isinstance(version, yaml.ScalarNode):
        return None
    edits.append((version.start_mark.index, version.end_mark.index, json.dumps(wanted["version"])))
    for section in ("engagement", "fit"):
        node = top.get(section)
        rules = wanted.get(section) or []
        before = original.get(section) or []
        if node is None:
            continue
        if not isinstance(node, yaml.SequenceNode) or len(node.value) != len(rules):
            return None
        for item, rule, old in zip(node.value, rules, before, strict=True):
            if not isinstance(item, yaml.MappingNode):
                return None
            fields = _mapping(item)
            if ("cap" in fields) != ("cap" in rule):
                return None  # a cap dropped: the structure changes
            targets = [(fields.get("points"), rule.get("points"), old.get("points"))]
            if "cap" in rule:
                cap = fields["cap"]
                if not isinstance(cap, yaml.MappingNode):
                    return None
                targets.append(
                    (_mapping(cap).get("points"), rule["cap"]["points"], old["cap"]["points"])
                )
            for scalar, value, was in targets:
                if value is None or value == was:
                    continue
                if not isinstance(scalar, yaml.ScalarNode):
                    return None
                edits.append((scalar.start_mark.index, scalar.end_mark.index, repr(value)))
    out = text
    for start, end, new in sorted(edits, reverse=True):
        out = out[:start] + new + out[end:]
    return out


def _mapping(node: yaml.MappingNode) -> dict[str, yaml.Node]:
    return {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
