"""Learned weights: a regularised logistic regression of an outcome on what the engine computes
at handoff, judged on a held-out split against the current rules' score, and exported as a rules
file with integer points, so the learned model stays a rules file: explainable, and promoted
through replay, diff and shadow like any other.

Features (streamscore.lab.examples, importable without scikit-learn): each engagement rule's
decayed points at handoff (named by rule id), each fit rule that matched (rule id, 0/1), each
BANT criterion met (`bant:<criterion>`, 0/1). Points come from coefficients (`scale_points`);
BANT criteria carry no points in a rules file (they gate the handoff), so their weights are
reported, not exported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from streamscore.lab.diff import roc_auc
from streamscore.lab.errors import LearnRefused
from streamscore.lab.examples import (
    BANT_PREFIX,
    Example,
    FeatureKind,
    Outcome,
    Target,
    feature_name,
    features_at_handoff,
    is_positive,
)
from streamscore.scoring.rules import BANT_CRITERIA, CompiledRules

__all__ = [
    "BANT_PREFIX",
    "DEFAULT_LIMITS",
    "Example",
    "LearnResult",
    "Limits",
    "Outcome",
    "Target",
    "feature_name",
    "features_at_handoff",
    "is_positive",
    "learn",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Below these, `learn` refuses: the weights would be noise, and so would the export."""

    min_examples: int = 200
    #: outcomes of each class (reached the target, and did not): roughly 10 per learned weight
    #: for a handful of strong rules; below it coefficients swing from sample to sample
    min_positives: int = 50
    #: the rarer class's share of the examples; below it the held-out AUC rests on a handful of
    #: leads and the probabilities are poorly calibrated
    min_minority_share: float = 0.02
    #: a feature non-zero in fewer training examples than this is not learned: its rule keeps
    #: its points, and the report says so
    min_support: int = 5


DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True, slots=True)
class Feature:
    """A learnable feature of the rules: a rule with points, or a BANT criterion."""

    name: str
    kind: FeatureKind
    points: float | None  # the rule's points now; None for BANT
    cap_points: float  # 0 when uncapped
    flagged: bool  # the rule also (dis)qualifies, so 0 points is allowed


def rule_features(rules: CompiledRules) -> list[Feature]:
    """The rules' learnable features, in rules order: engagement, fit, BANT."""
    found = [
        Feature(r.id, "engagement", r.points, r.cap_points, r.flag != 0)
        for r in rules.engagement
        if r.points != 0
    ]
    found += [
        Feature(f.id, "fit", f.points, 0.0, False)
        for a in rules.attributes
        for f in a.fit_rules
        if f.points != 0 and not f.disqualify
    ]
    bits = {bit for a in rules.attributes for bit, _ in a.bant_tests}
    found += [
        Feature(feature_name("bant", c), "bant", None, 0.0, False)
        for i, c in enumerate(BANT_CRITERIA)
        if 1 << i in bits
    ]
    return found


@dataclass(frozen=True, slots=True)
class Weight:
    """What was learned for one feature, and the points it exports to."""

    name: str
    kind: FeatureKind
    support: int  # training examples where the feature is not 0
    #: log-odds per point of the rule now (engagement), per match (fit, BANT); None: not learned
    coefficient: float | None
    old_points: float | None
    new_points: float | None  # an integer when learned; the old points when kept; None: BANT
    new_cap_points: float | None  # the scaled cap; None when uncapped or the cap is dropped
    note: str


@dataclass(frozen=True, slots=True)
class HeldOut:
    """The held-out split, for the report's charts: one entry per example."""

    lead_ids: tuple[str, ...]
    labels: tuple[bool, ...]
    current: tuple[float, ...]  # the current rules' score
    learned: tuple[float, ...]  # the learned model's probability
    exported: tuple[float, ...]  # the exported integer points' score


@dataclass(frozen=True, slots=True)
class LearnResult:
    """A learned model: how it was fitted, how it did held out, and its weights as points."""

    target: Target
    rules_version: str
    seed: int
    c: float
    train_examples: int
    train_positives: int
    test_examples: int
    test_positives: int
    auc_current: float | None
    auc_learned: float | None
    auc_exported: float | None
    intercept: float
    #: points per unit of log-odds: chosen so the handed-off leads' mean score is unchanged
    scale: float
    weights: tuple[Weight, ...]
    unknown_features: tuple[str, ...]  # in the examples but not in the rules: ignored
    held_out: HeldOut

    def weight(self, name: str) -> Weight:
        """The weight of one feature."""
        return next(w for w in self.weights if w.name == name)


def check_examples(examples: Sequence[Example], target: Target, limits: Limits) -> None:
    """Raise LearnRefused, with every reason, when the outcomes cannot support a model."""
    n = len(examples)
    positives = sum(is_positive(e.outcome, target) for e in examples)
    negatives = n - positives
    reasons = []
    if n < limits.min_examples:
        reasons.append(f"only {n:,} examples (at least {limits.min_examples:,} needed)")
    if positives < limits.min_positives:
        reasons.append(
            f"only {positives:,} reached {target} (at least {limits.min_positives:,} needed)"
        )
    if negatives < limits.min_positives:
        reasons.append(
            f"only {negatives:,} did not reach {target} (at least {limits.min_positives:,} needed)"
        )
    if n and min(positives, negatives) / n < limits.min_minority_share:
        share = 100 * positives / n
        reasons.append(
            f"{share:.1f}% of the examples reached {target}: a class imbalance beyond "
            f"{100 * limits.min_minority_share:g}% / {100 - 100 * limits.min_minority_share:g}%, "
            "where the held-out AUC rests on a handful of leads"
        )
    if reasons:
        hint = " or learn against 'opportunity' (more positives)" if target == "won" else ""
        raise LearnRefused(
            "not learning weights: "
            + "; ".join(reasons)
            + f". A model fitted on these outcomes would be noise. Collect more outcomes{hint}."
        )


def learn(
    examples: Sequence[Example],
    rules: CompiledRules,
    *,
    target: Target = "opportunity",
    seed: int = 0,
    test_share: float = 0.3,
    c: float = 1.0,
    limits: Limits = DEFAULT_LIMITS,
) -> LearnResult:
    """Fit L2-regularised logistic regression on a stratified, seeded split; judge it held out."""
    check_examples(examples, target, limits)
    features = rule_features(rules)
    known = {f.name for f in features}
    unknown = sorted({name for e in examples for name in e.features} - known)
    x = np.array([[e.features.get(f.name, 0.0) for f in features] for e in examples], dtype=float)
    y = np.array([is_positive(e.outcome, target) for e in examples], dtype=bool)
    score = np.array([e.score for e in examples], dtype=float)
    index = np.arange(len(examples))
    train, test = train_test_split(index, test_size=test_share, random_state=seed, stratify=y)
    x_train = x[train]
    support = (x_train != 0).sum(axis=0)
    varies = x_train.std(axis=0) > 0
    learned = [j for j in range(len(features)) if support[j] >= limits.min_support and varies[j]]
    if not learned:
        raise LearnRefused("not learning weights: no rule fires in enough examples to learn from")
    scaler = StandardScaler().fit(x_train[:, learned])
    model = LogisticRegression(C=c, max_iter=2000)
    model.fit(scaler.transform(x_train[:, learned]), y[train])
    # Back to raw units: log-odds per point (engagement) or per match (fit, BANT).
    raw = model.coef_[0] / scaler.scale_
    intercept = float(model.intercept_[0] - np.sum(raw * scaler.mean_))
    coefficient: dict[int, float] = {j: float(b) for j, b in zip(learned, raw, strict=True)}
    scale = scale_points(features, coefficient, x_train, score[train])
    weights = [
        _weight(f, j, int(support[j]), coefficient.get(j), scale, limits, bool(varies[j]))
        for j, f in enumerate(features)
    ]
    probability = model.predict_proba(scaler.transform(x[test][:, learned]))[:, 1]
    exported = exported_scores(features, weights, x[test])
    labels = [bool(v) for v in y[test]]
    return LearnResult(
        target=target,
        rules_version=rules.version,
        seed=seed,
        c=c,
        train_examples=len(train),
        train_positives=int(y[train].sum()),
        test_examples=len(test),
        test_positives=int(y[test].sum()),
        auc_current=roc_auc([float(s) for s in score[test]], labels),
        auc_learned=roc_auc([float(p) for p in probability], labels),
        auc_exported=roc_auc(exported, labels),
        intercept=intercept,
        scale=scale,
        weights=tuple(weights),
        unknown_features=tuple(unknown),
        held_out=HeldOut(
            lead_ids=tuple(examples[i].lead_id for i in test),
            labels=tuple(labels),
            current=tuple(float(s) for s in score[test]),
            learned=tuple(float(p) for p in probability),
            exported=tuple(exported),
        ),
    )


def _contribution_per_unit(feature: Feature, coefficient: float) -> float:
    # An engagement feature is the rule's decayed points, so the rule's new points are its old
    # points times what one of them is worth; a fit feature is one match.
    if feature.kind == "engagement" and feature.points is not None:
        return coefficient * feature.points
    return coefficient


def scale_points(
    features: Sequence[Feature],
    coefficient: Mapping[int, float],
    x_train: Any,
    score_train: Any,
) -> float:
    """Points per unit of log-odds, s: exported points are s x coefficient (per point of the
    rule now, for engagement rules), so the exported score is s x the learned log-odds (less the
    intercept, and BANT, which has no points) plus what the rules not learned keep.

    s is chosen so that the training examples' mean exported score equals their mean current
    score at handoff. The examples are handoffs, so their mean sits just above the handoff
    threshold: a typical handed-off lead keeps its place against the tiers' thresholds, and the
    thresholds, tiers and gates keep their meaning; what changes is which leads rank above or
    below them. Refused when the learned weights give the handoffs a mean of 0 or less: the
    outcomes then contradict the current rules too much to map onto their thresholds.
    """
    learned_part = np.zeros(len(score_train))
    kept_part = np.zeros(len(score_train))
    for j, feature in enumerate(features):
        if feature.kind == "bant":
            continue
        column = x_train[:, j]
        if j in coefficient:
            learned_part += coefficient[j] * column
        else:
            kept_part += column if feature.kind == "engagement" else (feature.points or 0) * column
    mean_learned = float(learned_part.mean())
    target_mean = float(np.mean(score_train) - kept_part.mean())
    if mean_learned <= 0 or target_mean <= 0:
        raise LearnRefused(
            "not exporting learned weights: they give the handed-off leads a mean score of "
            f"{mean_learned:.3g} log-odds against {target_mean:.3g} points now, so they cannot "
            "be scaled onto the current thresholds; the outcomes contradict the rules' points"
        )
    return target_mean / mean_learned


def _weight(
    feature: Feature,
    j: int,
    support: int,
    coefficient: float | None,
    scale: float,
    limits: Limits,
    varies: bool,
) -> Weight:
    if feature.kind == "bant":
        note = "reported only: BANT criteria gate the handoff and carry no points"
        if coefficient is None:
            note = "not learned: " + _why_not(support, limits, varies)
        return Weight(feature.name, "bant", support, coefficient, None, None, None, note)
    old = feature.points
    assert old is not None
    if coefficient is None:
        capped = feature.cap_points or None
        note = f"kept: {_why_not(support, limits, varies)}"
        return Weight(feature.name, feature.kind, support, None, old, old, capped, note)
    exact = scale * _contribution_per_unit(feature, coefficient)
    new = round(exact)
    note = ""
    if new == 0 and not feature.flagged:
        new = 1 if exact >= 0 else -1
        note = "learned weight rounds to 0: kept at the smallest non-zero points"
    cap: float | None = None
    if feature.cap_points:
        if new > 0:
            cap = max(new, round(feature.cap_points * new / old)) if old > 0 else None
        else:
            note = (note + "; " if note else "") + "sign turned: cap dropped (caps bound gains)"
    return Weight(feature.name, feature.kind, support, coefficient, old, new, cap, note)


def _why_not(support: int, limits: Limits, varies: bool) -> str:
    if support < limits.min_support:
        return f"fires in {support} training examples (fewer than {limits.min_support})"
    if not varies:
        return "the same in every training example"
    return "not learned"


def exported_scores(features: Sequence[Feature], weights: Sequence[Weight], x: Any) -> list[float]:
    """The score each example gets from the exported integer points (before floor/ceiling)."""
    total = np.zeros(x.shape[0])
    for j, (feature, weight) in enumerate(zip(features, weights, strict=True)):
        if weight.new_points is None or feature.points is None:
            continue
        if feature.kind == "engagement":
            total += x[:, j] * (weight.new_points / feature.points)
        else:
            total += x[:, j] * weight.new_points
    return [float(v) for v in total]


def calibration(
    labels: Sequence[bool], probability: Sequence[float], bins: int = 10
) -> list[tuple[float, float, int]]:
    """Reliability: (mean predicted, observed rate, examples) per equal-count bin of probability."""
    order = sorted(range(len(labels)), key=probability.__getitem__)
    out = []
    for b in range(bins):
        chunk = order[b * len(order) // bins : (b + 1) * len(order) // bins]
        if chunk:
            predicted = math.fsum(probability[i] for i in chunk) / len(chunk)
            observed = sum(labels[i] for i in chunk) / len(chunk)
            out.append((predicted, observed, len(chunk)))
    return out
