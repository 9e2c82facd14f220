"""Learned weights: known weights recovered in order, a wrong hand model beaten held out, the
export valid and otherwise unchanged, and refusals when the outcomes cannot support a model."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from streamscore.lab.errors import LearnRefused
from streamscore.lab.examples import features_from_contributions
from streamscore.lab.export import candidate_rules_text
from streamscore.lab.files import read_examples
from streamscore.lab.learn import (
    Example,
    LearnResult,
    Outcome,
    features_at_handoff,
    learn,
    rule_features,
)
from streamscore.scoring.rules import load_rules, parse_rules_text
from tests.conftest import RULES_FILE
from tests.lab_synthetic import RULES_YAML, TRUE_PER_UNIT, synthetic_examples
from tests.unit.scoring.test_rules import BASE_TOML

SYNTH_RULES = parse_rules_text(RULES_YAML, "synth.yaml")


@pytest.fixture(scope="module")
def fitted() -> list[LearnResult]:
    """Three seeded datasets of 3,000 handoffs, each learned against opportunity."""
    return [learn(synthetic_examples(3000, seed), SYNTH_RULES, seed=seed) for seed in range(3)]


def per_unit(result: LearnResult) -> dict[str, float]:
    """Learned log-odds per award (engagement) or match: the unit points are exported in."""
    return {
        w.name: w.coefficient * (w.old_points or 1.0 if w.kind == "engagement" else 1.0)
        for w in result.weights
        if w.coefficient is not None
    }


def test_learn_recovers_the_order_of_the_true_weights(fitted: list[LearnResult]) -> None:
    for result in fitted:
        learned = per_unit(result)
        assert set(learned) == set(TRUE_PER_UNIT)
        names = sorted(learned)
        rho = spearmanr([TRUE_PER_UNIT[n] for n in names], [learned[n] for n in names]).statistic
        assert rho >= 0.95, (rho, learned)
        # and the exported points keep that order among the rules (BANT is not exported)
        points = {w.name: w.new_points for w in result.weights if w.kind != "bant"}
        truth = sorted(points, key=TRUE_PER_UNIT.__getitem__)
        assert (
            spearmanr([TRUE_PER_UNIT[n] for n in truth], [points[n] for n in truth]).statistic > 0.9
        )


def test_learn_beats_the_wrong_hand_model_held_out(fitted: list[LearnResult]) -> None:
    for result in fitted:
        assert result.auc_current is not None
        assert result.auc_learned is not None
        assert result.auc_exported is not None
        assert result.auc_learned > result.auc_current + 0.2
        assert result.auc_exported > result.auc_current + 0.2  # integer points, no BANT
        held = result.held_out
        assert result.auc_learned == pytest.approx(roc_auc_score(held.labels, held.learned))
        assert result.auc_current == pytest.approx(roc_auc_score(held.labels, held.current))


def test_split_is_stratified_and_seeded() -> None:
    examples = synthetic_examples(1000, 11)
    a = learn(examples, SYNTH_RULES, seed=3)
    b = learn(examples, SYNTH_RULES, seed=3)
    c = learn(examples, SYNTH_RULES, seed=4)
    assert a.held_out == b.held_out
    assert a.weights == b.weights
    assert set(a.held_out.lead_ids) != set(c.held_out.lead_ids)
    positives = a.train_positives + a.test_positives
    assert a.test_examples == 300
    assert abs(a.test_positives - positives * 0.3) <= 1


def test_rules_with_too_little_support_keep_their_points() -> None:
    examples = [
        e._replace(features={k: v for k, v in e.features.items() if k != "webinar_signup"})
        for e in synthetic_examples(600, 5)
    ]
    result = learn(examples, SYNTH_RULES, seed=0)
    kept = result.weight("webinar_signup")
    assert kept.coefficient is None
    assert kept.new_points == kept.old_points == 15
    assert kept.note.startswith("kept: fires in 0 training examples")


def strip_points(data: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    out.pop("version")
    for section in ("engagement", "fit"):
        for rule in out.get(section) or []:
            rule.pop("points", None)
            if "cap" in rule:
                rule["cap"].pop("points")
    return out


def test_export_passes_load_rules_and_keeps_all_but_points_and_version(
    fitted: list[LearnResult], tmp_path: Path
) -> None:
    result = fitted[0]
    text = candidate_rules_text(RULES_YAML, "synth.yaml", result.weights, "synth-learned-1", "x")
    path = tmp_path / "candidate.yaml"
    path.write_text(text, encoding="utf-8")
    rules = load_rules(path)
    assert rules.version == "synth-learned-1"
    before, after = yaml.safe_load(RULES_YAML), yaml.safe_load(text)
    assert strip_points(after) == strip_points(before)
    points = {r.id: r.points for r in rules.engagement}
    points |= {f.id: f.points for a in rules.attributes for f in a.fit_rules}
    for w in result.weights:
        if w.kind != "bant":
            assert points[w.name] == w.new_points
            assert float(points[w.name]).is_integer()
    page_view = next(r for r in rules.engagement if r.id == "page_view")
    # the cap still allows the same number of awards per window
    assert page_view.cap_points / page_view.points == 10 / 1
    # edited in place: comments survive, and only points and version lines differ
    assert "# the hand model's favourite" in text
    old_lines = RULES_YAML.splitlines()
    new_lines = text.splitlines()[1:]  # after the one-line header
    assert len(old_lines) == len(new_lines)
    changed = [new for old, new in zip(old_lines, new_lines, strict=True) if old != new]
    assert changed
    assert all("points:" in line or line.startswith("version:") for line in changed)


def random_examples(rules_text: str, n: int, seed: int, source: str = "r.yaml") -> list[Example]:
    """Examples for any rules: every learnable feature drawn at random, a random true model
    (positive weights, so that the learned score of a handoff is positive on average)."""
    rules = parse_rules_text(rules_text, source)
    rng = np.random.default_rng(seed)
    features = rule_features(rules)
    truth = rng.uniform(0.1, 1.5, len(features))
    out = []
    for i in range(n):
        row: dict[str, float] = {}
        # centred, so that about a third of the handoffs convert
        logit = -1.0 - sum(
            w * (0.8 if f.kind == "engagement" else 0.3)
            for f, w in zip(features, truth, strict=True)
        )
        for f, w in zip(features, truth, strict=True):
            if f.kind == "engagement":
                units = float(rng.poisson(0.8))
                value = units * (f.points or 1.0)
            else:
                units = value = float(rng.random() < 0.3)
            if value:
                row[f.name] = value
            logit += w * units
        outcome: Outcome = "opportunity" if rng.random() < 1 / (1 + np.exp(-logit)) else "none"
        out.append(Example(f"l{i}", row, float(sum(row.values())), outcome))
    return out


def test_export_of_the_example_rules_keeps_its_outcomes_section_and_comments(
    tmp_path: Path,
) -> None:
    text = RULES_FILE.read_text(encoding="utf-8")
    result = learn(random_examples(text, 1500, 2), parse_rules_text(text, "rules.yaml"))
    out = candidate_rules_text(text, str(RULES_FILE), result.weights, "b2b-learned", "l1\nl2")
    assert out.startswith("# l1\n# l2\n")
    path = tmp_path / "candidate.yaml"
    path.write_text(out, encoding="utf-8")
    candidate = load_rules(path)
    assert candidate.outcomes == load_rules(RULES_FILE).outcomes
    before, after = yaml.safe_load(text), yaml.safe_load(out)
    if any("cap dropped" in w.note for w in result.weights):
        for data in (before, after):  # a dropped cap is the one structural change allowed
            for rule in data["engagement"]:
                rule.pop("cap", None)
    assert strip_points(after) == strip_points(before)


def test_a_sign_turned_on_a_capped_rule_drops_the_cap(tmp_path: Path) -> None:
    # page_view is capped; in this truth it lowers the odds
    examples = synthetic_examples(2000, 9, {**TRUE_PER_UNIT, "page_view": -0.3})
    result = learn(examples, SYNTH_RULES, seed=0)
    weight = result.weight("page_view")
    assert weight.new_points is not None
    assert weight.new_points < 0
    assert weight.new_cap_points is None
    assert "cap dropped" in weight.note
    text = candidate_rules_text(RULES_YAML, "synth.yaml", result.weights, "synth-2", "h")
    assert "written afresh" in text
    page_view = next(r for r in parse_rules_text(text, "c.yaml").engagement if r.id == "page_view")
    assert page_view.cap_points == 0
    assert page_view.points == weight.new_points


def examples_with(positives: int, negatives: int) -> list[Example]:
    return [
        Example(f"l{i}", {}, 0.0, "won" if i < positives else "none")
        for i in range(positives + negatives)
    ]


@pytest.mark.parametrize(
    ("positives", "negatives", "reasons"),
    [
        (30, 100, ["only 130 examples (at least 200 needed)", "only 30 reached won"]),
        (40, 500, ["only 40 reached won (at least 50 needed)"]),
        (90, 6000, ["1.5% of the examples reached won: a class imbalance beyond 2% / 98%"]),
        (4000, 40, ["only 40 did not reach won", "99.0% of the examples reached won"]),
    ],
)
def test_refusals_say_why_in_one_message(
    positives: int, negatives: int, reasons: list[str]
) -> None:
    with pytest.raises(LearnRefused) as caught:
        learn(examples_with(positives, negatives), SYNTH_RULES, target="won")
    message = str(caught.value)
    assert message.startswith("not learning weights: ")
    for reason in reasons:
        assert reason in message
    assert "\n" not in message
    assert "learn against 'opportunity'" in message


def test_an_opportunity_target_counts_won_deals() -> None:
    examples = examples_with(60, 240)
    refused_for_won = examples[:30] + [e._replace(outcome="opportunity") for e in examples[30:60]]
    with pytest.raises(LearnRefused, match="only 30 reached won"):
        learn(refused_for_won + examples[60:], SYNTH_RULES, target="won")
    with pytest.raises(LearnRefused, match="no rule fires in enough examples"):
        learn(refused_for_won + examples[60:], SYNTH_RULES, target="opportunity")


def test_features_from_contributions_split_engagement_fit_and_bant() -> None:
    contributions = [("pricing_page", 17.5), ("title_executive", 5.0), ("unsubscribe", -30.0)]
    assert features_from_contributions(contributions, 0b0010, SYNTH_RULES) == {
        "pricing_page": 17.5,
        "unsubscribe": -30.0,
        "title_executive": 1.0,
        "bant:authority": 1.0,
    }


def test_features_at_handoff_names_rules_and_bant() -> None:
    assert features_at_handoff(
        {"page_view": 3.5, "email_click": 0.0}, ["title_executive"], 0b0101
    ) == {
        "page_view": 3.5,
        "title_executive": 1.0,
        "bant:budget": 1.0,
        "bant:need": 1.0,
    }


def test_examples_file_round_trip(tmp_path: Path) -> None:
    examples = synthetic_examples(20, 1)
    path = tmp_path / "examples.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e._asdict()) + b"\n" for e in examples))
    assert read_examples(path) == examples


def test_weights_that_give_handoffs_no_positive_score_are_refused() -> None:
    """Every handoff has page views; if they alone decide against, no scale fits the tiers."""
    examples = synthetic_examples(2000, 9)
    contradicting = [
        e._replace(outcome="none") if e.features.get("page_view", 0) > 5 else e for e in examples
    ]
    with pytest.raises(LearnRefused, match="cannot be scaled onto the current thresholds"):
        learn(contradicting, SYNTH_RULES, seed=0)


def test_a_toml_rules_file_is_exported_as_yaml(tmp_path: Path) -> None:
    rules = parse_rules_text(BASE_TOML, "rules.toml")
    result = learn(random_examples(BASE_TOML, 800, 4, "rules.toml"), rules)
    text = candidate_rules_text(BASE_TOML, "rules.toml", result.weights, "t-2", "learned")
    assert "written afresh" in text
    path = tmp_path / "candidate.yaml"
    path.write_text(text, encoding="utf-8")
    candidate = load_rules(path)
    assert candidate.version == "t-2"
    assert candidate.tiers == rules.tiers
    assert strip_points(yaml.safe_load(text)) == strip_points(tomllib.loads(BASE_TOML))
