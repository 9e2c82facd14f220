"""Learning examples: what the engine had at a handoff and what became of it. Stdlib only, so
the worker can build them without importing scikit-learn (streamscore.lab.learn fits them).

Features: each engagement rule's decayed points at handoff (named by rule id), each fit rule
that matched (rule id, 0/1), each BANT criterion met (`bant:<criterion>`, 0/1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, Literal, NamedTuple

from streamscore.scoring.rules import BANT_CRITERIA, CompiledRules

Outcome = Literal["none", "opportunity", "won"]
Target = Literal["opportunity", "won"]
FeatureKind = Literal["engagement", "fit", "bant"]
BANT_PREFIX: Final = "bant:"


class Example(NamedTuple):
    """One handoff: its features then, its score under the rules then, and how far it got."""

    lead_id: str
    features: Mapping[str, float]  # feature_name -> value; absent means 0
    score: float  # the current rules' score at handoff
    outcome: Outcome  # furthest stage: a won deal was an opportunity; a lost deal was one too


def feature_name(kind: FeatureKind, name: str) -> str:
    """The example feature of an engagement or fit rule (its id) or a BANT criterion."""
    return BANT_PREFIX + name if kind == "bant" else name


def features_at_handoff(
    engagement_points: Mapping[str, float], fit_matched: Iterable[str], bant_mask: int
) -> dict[str, float]:
    """An example's features from what the engine has at handoff: decayed points by engagement
    rule id, the ids of the fit rules that matched, the BANT mask (bit i: BANT_CRITERIA[i])."""
    features = {rule: float(points) for rule, points in engagement_points.items() if points}
    features.update((rule, 1.0) for rule in fit_matched)
    features.update(
        (feature_name("bant", c), 1.0) for i, c in enumerate(BANT_CRITERIA) if bant_mask >> i & 1
    )
    return features


def is_positive(outcome: Outcome, target: Target) -> bool:
    """Did the lead reach the target (a won deal counts as an opportunity)."""
    return outcome == "won" if target == "won" else outcome != "none"


def features_from_contributions(
    contributions: Iterable[tuple[str, float]], bant_mask: int, rules: CompiledRules
) -> dict[str, float]:
    """Features from every rule's points at handoff (scoring.state.contributions_at: decayed
    engagement, penalties and fit, mixed) and the lead's BANT mask."""
    engagement = frozenset(rules.rule_ids)
    pairs = list(contributions)
    return features_at_handoff(
        {rule: points for rule, points in pairs if rule in engagement},
        (rule for rule, points in pairs if rule not in engagement and points),
        bant_mask,
    )
