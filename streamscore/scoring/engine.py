"""Per-event evaluation: which rules an event earns, and which profile attributes it sets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from streamscore.scoring.rules import Attribute, CompiledRules, to_number

NO_FLAG, DISQUALIFY, REQUALIFY = 0, 1, 2
#: A profile attribute keeps at most this many characters of its value: the value is stored in
#: the lead's state and shown by every view, and a tracker may send megabytes in a trait.
MAX_ATTRIBUTE_CHARS = 512


class ScorableEvent(Protocol):
    """The fields of a parsed event that scoring reads."""

    @property
    def type(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def properties(self) -> Mapping[str, Any]: ...
    @property
    def context(self) -> Mapping[str, Any]: ...
    @property
    def traits(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class AttributeUpdate:
    """A profile attribute value seen on an event, with what it is worth."""

    attribute: int
    value: str
    fit_points: float
    bant_mask: int
    disqualify: bool
    reasons: tuple[tuple[str, float], ...]


class Decision(NamedTuple):
    """What one event contributes, before any per-lead state is applied."""

    awards: tuple[tuple[int, float], ...]  # (rule index, points)
    attributes: tuple[AttributeUpdate, ...]
    flag: int


_EMPTY: Mapping[str, Any] = {}


def _lookup(event: ScorableEvent, path: tuple[str, ...]) -> Any:
    root = path[0]
    if root == "type":
        return event.type
    value: Any = (
        event.properties
        if root == "properties"
        else event.traits
        if root == "traits"
        else event.context
    )
    for part in path[1:]:
        if not isinstance(value, dict | MappingProxyType):
            return None
        value = value.get(part)
    return value


def _attribute_value(attr: Attribute, event: ScorableEvent) -> str | float | None:
    raw: Any = None
    for path in attr.sources:
        raw = _lookup(event, path)
        if raw is not None and not (isinstance(raw, str) and not raw.strip()):
            break
        raw = None
    if raw is None or isinstance(raw, dict | list):
        return None
    if attr.numeric:
        return to_number(raw)
    text = str(raw).strip()[:MAX_ATTRIBUTE_CHARS]
    if attr.transform == "lower":
        text = text.lower()
    elif attr.transform == "email_domain":
        text = text.rpartition("@")[2].lower()
    return text or None


def _score_attribute(attr: Attribute, value: str | float) -> AttributeUpdate:
    reasons = []
    points = 0.0
    disqualify = False
    for rule in attr.fit_rules:
        if rule.test(value):
            points += rule.points
            disqualify = disqualify or rule.disqualify
            if rule.points:
                reasons.append((rule.id, rule.points))
    mask = 0
    for bit, test in attr.bant_tests:
        if test(value):
            mask |= bit
    text = repr(value) if isinstance(value, float) else value
    return AttributeUpdate(attr.index, text, points, mask, disqualify, tuple(reasons))


def decide(event: ScorableEvent, rules: CompiledRules) -> Decision:
    """Evaluate one event against the rules; pure and stateless."""
    awards = []
    flag = NO_FLAG
    for rule in rules.by_type.get(event.type, ()):
        for _, read, test in rule.tests:
            if not test(read(event)):
                break
        else:
            if rule.points:
                awards.append((rule.index, rule.points))
            if rule.flag and flag != DISQUALIFY:
                # Disqualification wins over requalification on the same event.
                flag = rule.flag
    source_index = rules.source_index
    if not source_index:  # rules without attributes (no profile to keep): nothing to read
        return Decision(tuple(awards), (), flag)
    # Only attributes with a source key present on this event are looked at; most events
    # (page views, opens) carry none, so this costs a few dict probes.
    touched: set[int] = set()
    for root, mapping in (
        ("traits", event.traits),
        ("properties", event.properties),
        ("context", event.context),
    ):
        keys = source_index.get(root)
        if not mapping or not keys:
            continue
        for key in mapping:
            for _, attr_index in keys.get(key, ()):
                touched.add(attr_index)
    if not touched:
        return Decision(tuple(awards), (), flag)
    updates = []
    for attr_index in sorted(touched):
        attr = rules.attributes[attr_index]
        value = _attribute_value(attr, event)
        if value is not None:
            updates.append(_score_attribute(attr, value))
    return Decision(tuple(awards), tuple(updates), flag)
