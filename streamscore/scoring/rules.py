"""Rules file model: load YAML/TOML, validate with located errors, compile to fast predicates."""

from __future__ import annotations

import functools
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streamscore.errors import RulesError
from streamscore.scoring.durations import parse_duration_s
from streamscore.scoring.outcome_rules import (
    OutcomeRules,
    OutcomesSpec,
    check_outcomes,
    compile_outcomes,
)
from streamscore.scoring.source_lines import line_index

#: Distinct strings each regex test remembers its answer for.
REGEX_CACHE_SIZE = 4096

#: Event types a rule may name; kept in step with streamscore.events.types by a unit test.
KNOWN_EVENT_TYPES = (
    "page_view",
    "email_open",
    "email_click",
    "download",
    "webinar_signup",
    "trial_signup",
    "demo_request",
    "contact_request",
    "unsubscribe",
    "identify",
    "alias",
    "group",
    "track",
)
#: `event` is a custom track event's name (the tracker's event name): only track events have one.
FIELD_ROOTS = ("type", "event", "properties", "context", "traits")
#: The event type whose events carry a name that rules can match with `event`.
NAMED_EVENT_TYPE = "track"
BANT_CRITERIA = ("budget", "authority", "need", "timeline")
GRADES = ("A", "B", "C", "D")
RULE_ID = r"^[a-z][a-z0-9_]{0,63}$"
#: A path into an account's traits (a group call's traits).
TRAIT_PATH = r"[A-Za-z_][A-Za-z0-9_-]{0,63}(\.[A-Za-z_][A-Za-z0-9_-]{0,63}){0,3}"

Predicate = Callable[[Any], bool]
Getter = Callable[[Any], Any]
_SCALARS = (str, int, float, bool)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Matcher(_Strict):
    """Tests on one value; every test given must hold."""

    equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    not_in: list[Any] | None = None
    prefix: str | None = None
    suffix: str | None = None
    contains: str | None = None
    regex: str | None = None
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None
    exists: bool | None = None

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Matcher:
        if not self.model_fields_set:
            raise ValueError("a matcher needs at least one test (equals, in, prefix, regex, ...)")
        return self


def _as_matcher(value: Any) -> Matcher:
    if isinstance(value, Matcher):
        return value
    if isinstance(value, dict):
        return Matcher.model_validate(value)
    if isinstance(value, list):
        return Matcher.model_validate({"in": value})
    return Matcher(equals=value)


class CapSpec(_Strict):
    """At most `points` from one rule per `window` of event time."""

    points: float = Field(gt=0)
    window: float

    @field_validator("window", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration_s(value)


class EngagementRuleSpec(_Strict):
    """Behavioural points for events matching `when`."""

    id: str = Field(pattern=RULE_ID)
    description: str = ""
    when: dict[str, Matcher]
    points: float = 0.0
    cap: CapSpec | None = None
    disqualify: bool = False
    requalify: bool = False

    @field_validator("when", mode="before")
    @classmethod
    def _conditions(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError("`when` needs at least one condition, e.g. {type: page_view}")
        # Bare values mean equals, lists mean in; matcher errors keep their condition key.
        return {
            path: test if isinstance(test, dict) else {"in": test} if isinstance(test, list)
            else {"equals": test}
            for path, test in value.items()
        }  # fmt: skip

    @field_validator("when", mode="after")
    @classmethod
    def _known_fields_and_types(cls, value: dict[str, Matcher]) -> dict[str, Matcher]:
        for path in value:
            if path.split(".", 1)[0] not in FIELD_ROOTS:
                raise ValueError(f"field {path!r} must start with one of {', '.join(FIELD_ROOTS)}")
        for path in value:
            if path.startswith("event."):
                raise ValueError(f"field {path!r}: `event` is the event's name, it has no fields")
        type_test = value.get("type")
        if type_test is not None:
            named = [type_test.equals] if "equals" in type_test.model_fields_set else []
            named += (type_test.in_ or []) + (type_test.not_in or [])
            unknown = [n for n in named if n not in KNOWN_EVENT_TYPES]
            if unknown:
                raise ValueError(
                    f"unknown event type(s) {unknown}; known: {', '.join(KNOWN_EVENT_TYPES)}"
                )
            if "event" in value and not _compile_matcher(type_test)(NAMED_EVENT_TYPE):
                raise ValueError(
                    "an `event` condition matches custom track events only: give the rule no "
                    f"`type`, or type: {NAMED_EVENT_TYPE}"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EngagementRuleSpec:
        if self.disqualify and self.requalify:
            raise ValueError("a rule cannot both disqualify and requalify")
        if self.cap is not None and self.points <= 0:
            raise ValueError("a cap only applies to rules with positive points")
        if self.points == 0 and not (self.disqualify or self.requalify):
            raise ValueError("a rule needs non-zero points, disqualify or requalify")
        return self


class AttributeSpec(_Strict):
    """Where a profile attribute is read from, and how it is normalised."""

    from_: list[str] = Field(alias="from", min_length=1)
    transform: Literal["none", "lower", "email_domain"] = "none"
    kind: Literal["string", "number"] = Field(default="string", alias="type")

    @field_validator("from_")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if path.split(".", 1)[0] not in FIELD_ROOTS[1:] or "." not in path:
                raise ValueError(f"attribute source {path!r} must look like traits.x")
        return value


class FitRuleSpec(_Strict):
    """Fit points (or disqualification) when one profile attribute matches."""

    id: str = Field(pattern=RULE_ID)
    description: str = ""
    attribute: str
    when: Any
    points: float = 0.0
    disqualify: bool = False

    @field_validator("when", mode="after")
    @classmethod
    def _matcher(cls, value: Any) -> Matcher:
        return _as_matcher(value)


class BantCriterionSpec(_Strict):
    """A BANT criterion is met when the attribute matches."""

    attribute: str
    when: Any

    @field_validator("when", mode="after")
    @classmethod
    def _matcher(cls, value: Any) -> Matcher:
        return _as_matcher(value)


class TierSpec(_Strict):
    """A tier: entered at `enter` points, left below `exit` (hysteresis)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    enter: float | None = None
    exit: float | None = None


class HandoffSpec(_Strict):
    """When sales hears of a lead."""

    tier: str
    min_grade: Literal["A", "B", "C", "D"] = "D"
    min_bant: int = Field(default=0, ge=0, le=4)
    rearm_below: float | None = None


class DecaySpec(_Strict):
    """Exponential decay of engagement points by event time: positive ones, and penalties if set."""

    half_life: float
    penalties: bool = False

    @field_validator("half_life", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration_s(value)


class ScoreSpec(_Strict):
    """What tiers are judged on, and optional bounds."""

    basis: Literal["total", "engagement"] = "total"
    floor: float | None = None
    ceiling: float | None = None


class AccountFitSpec(_Strict):
    """Account fit points when every condition on the account's traits holds (a group call's
    traits: firmographics); the conditions language of engagement rules, keyed by trait path."""

    id: str = Field(pattern=RULE_ID)
    description: str = ""
    when: dict[str, Matcher]
    points: float = 0.0

    @field_validator("when", mode="before")
    @classmethod
    def _conditions(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError("`when` needs at least one condition, e.g. {employees: {gte: 200}}")
        for path in value:
            if not isinstance(path, str) or not re.fullmatch(TRAIT_PATH, path):
                raise ValueError(f"{path!r} is not a trait path like industry or address.country")
        return {k: _as_matcher(v) for k, v in value.items()}


class AccountDecaySpec(_Strict):
    """How fast a member lead's engagement fades in its account's score."""

    half_life: float

    @field_validator("half_life", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration_s(value)


class AccountHandoffSpec(_Strict):
    """When an account is handed off (account-based marketing), and when it may be again."""

    tier: str
    rearm_below: float | None = None


class AccountsSpec(_Strict):
    """The optional `accounts:` section: the account roll-up (scoring/accounts.py)."""

    #: The account's engagement: the sum of its best `top` members' engagement.
    top: int = Field(default=3, ge=1, le=1000)
    decay: AccountDecaySpec
    fit: list[AccountFitSpec] = []
    tiers: list[TierSpec] = Field(min_length=2)
    handoff: AccountHandoffSpec
    #: Derive a lead's account from its email domain when no group call gave one.
    from_email: bool = True
    #: Domains that name no company, added to the built-in free-mail list.
    free_mail: list[str] = []

    @field_validator("free_mail")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        for domain in value:
            if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)*(\.\*)?", domain):
                raise ValueError(f"{domain!r} is not a lower-case domain (gmx.* for any suffix)")
        return value


class RulesSpec(_Strict):
    """The whole rules file."""

    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:+-]+$")
    decay: DecaySpec
    score: ScoreSpec = ScoreSpec()
    attributes: dict[str, AttributeSpec] = {}
    engagement: list[EngagementRuleSpec] = Field(min_length=1)
    fit: list[FitRuleSpec] = []
    grades: dict[Literal["A", "B", "C"], float] = {"A": math.inf, "B": math.inf, "C": math.inf}
    bant: dict[Literal["budget", "authority", "need", "timeline"], BantCriterionSpec] = {}
    tiers: list[TierSpec] = Field(min_length=2)
    handoff: HandoffSpec
    outcomes: OutcomesSpec | None = None
    accounts: AccountsSpec | None = None


Loc = tuple[str | int, ...]


def cross_check(spec: RulesSpec) -> list[tuple[Loc, str]]:
    """Checks that span fields, each with the location it concerns; empty when all is well."""
    problems: list[tuple[Loc, str]] = []
    seen: set[str] = set()
    ids = [("engagement", i, r.id) for i, r in enumerate(spec.engagement)]
    ids += [("fit", i, r.id) for i, r in enumerate(spec.fit)]
    for section, i, rule_id in ids:
        if rule_id in seen:
            problems.append(((section, i, "id"), f"rule id {rule_id!r} is used twice"))
        seen.add(rule_id)
    for i, fit in enumerate(spec.fit):
        if fit.attribute not in spec.attributes:
            problems.append(
                (("fit", i, "attribute"), f"attribute {fit.attribute!r} is not defined")
            )
    for name, crit in spec.bant.items():
        if crit.attribute not in spec.attributes:
            problems.append(
                (("bant", name, "attribute"), f"attribute {crit.attribute!r} is not defined")
            )
    if len(spec.grades) not in (0, 3) or (
        spec.grades and not spec.grades["A"] >= spec.grades["B"] >= spec.grades["C"]
    ):
        problems.append((("grades",), "grades must set A >= B >= C (minimum fit points of each)"))
    return problems + _check_tiers(spec) + _check_outcomes(spec) + _check_accounts(spec)


def _check_accounts(spec: RulesSpec) -> list[tuple[Loc, str]]:
    accounts = spec.accounts
    if accounts is None:
        return []
    problems: list[tuple[Loc, str]] = []
    ids = [r.id for r in accounts.fit]
    for i, rule_id in enumerate(ids):
        if rule_id in ids[:i]:
            problems.append((("accounts", "fit", i, "id"), f"rule id {rule_id!r} is used twice"))
    if accounts.decay.half_life <= 0:
        problems.append((("accounts", "decay", "half_life"), "must be positive"))
    first = accounts.tiers[0]
    if first.enter is not None or first.exit is not None:
        problems.append(
            (("accounts", "tiers", 0), f"{first.name} is the floor tier: give it no enter/exit")
        )
    names = [t.name for t in accounts.tiers]
    if len(set(names)) != len(names):
        problems.append((("accounts", "tiers"), "tier names must be unique"))
    prev_enter, prev_exit = -math.inf, -math.inf
    for i, tier in enumerate(accounts.tiers[1:], start=1):
        if tier.enter is None:
            problems.append((("accounts", "tiers", i, "enter"), "enter is required"))
            continue
        exit_ = tier.enter if tier.exit is None else tier.exit
        if tier.enter <= prev_enter:
            problems.append((("accounts", "tiers", i, "enter"), "enter must rise tier by tier"))
        if exit_ > tier.enter:
            problems.append((("accounts", "tiers", i, "exit"), "exit must be <= enter"))
        elif exit_ <= prev_exit:
            problems.append((("accounts", "tiers", i, "exit"), "exit must rise tier by tier"))
        prev_enter, prev_exit = tier.enter, exit_
    handoff = accounts.handoff
    if handoff.tier not in names[1:]:
        problems.append(
            (("accounts", "handoff", "tier"), f"{handoff.tier!r} must name a tier above the first")
        )
    else:
        handoff_spec = accounts.tiers[names.index(handoff.tier)]
        top = handoff_spec.enter if handoff_spec.exit is None else handoff_spec.exit
        if handoff.rearm_below is not None and top is not None and handoff.rearm_below > top:
            problems.append(
                (("accounts", "handoff", "rearm_below"), "must be <= the handoff tier's exit")
            )
    return problems


def _check_outcomes(spec: RulesSpec) -> list[tuple[Loc, str]]:
    names = [t.name for t in spec.tiers]
    tier = spec.tiers[names.index(spec.handoff.tier)] if spec.handoff.tier in names else None
    exit_ = None if tier is None else tier.enter if tier.exit is None else tier.exit
    return check_outcomes(spec.outcomes, names, exit_)


def _check_tiers(spec: RulesSpec) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    first, rest = spec.tiers[0], spec.tiers[1:]
    if first.enter is not None or first.exit is not None:
        problems.append((("tiers", 0), f"{first.name} is the floor tier: give it no enter/exit"))
    names = [t.name for t in spec.tiers]
    if len(set(names)) != len(names):
        problems.append((("tiers",), "tier names must be unique"))
    lo, hi = spec.score.floor, spec.score.ceiling
    if lo is not None and hi is not None and lo >= hi:
        problems.append((("score", "floor"), "score.floor must be below score.ceiling"))
    prev_enter, prev_exit = -math.inf, -math.inf
    for i, tier in enumerate(rest, start=1):
        if tier.enter is None:
            problems.append((("tiers", i, "enter"), "enter is required"))
            continue
        exit_ = tier.enter if tier.exit is None else tier.exit
        if tier.enter <= prev_enter:
            problems.append((("tiers", i, "enter"), "enter must rise tier by tier"))
        if exit_ > tier.enter:
            problems.append((("tiers", i, "exit"), "exit must be <= enter (hysteresis)"))
        elif exit_ <= prev_exit:
            problems.append((("tiers", i, "exit"), "exit must rise tier by tier"))
        if (lo is not None and exit_ <= lo) or (hi is not None and tier.enter > hi):
            problems.append((("tiers", i), "thresholds outside score floor/ceiling"))
        prev_enter, prev_exit = tier.enter, exit_
    if spec.handoff.tier not in names[1:]:
        problems.append(
            (("handoff", "tier"), f"{spec.handoff.tier!r} must name a tier above the first")
        )
    else:
        tier = spec.tiers[names.index(spec.handoff.tier)]
        handoff_exit = tier.enter if tier.exit is None else tier.exit
        rearm = spec.handoff.rearm_below
        if rearm is not None and handoff_exit is not None and rearm > handoff_exit:
            problems.append(
                (("handoff", "rearm_below"), "must be <= the handoff tier's exit threshold")
            )
    return problems


# ---------------------------------------------------------------- compiled form


@dataclass(frozen=True, slots=True)
class Tier:
    """A compiled tier; the first tier has enter = exit = -inf."""

    name: str
    enter: float
    exit: float


@dataclass(frozen=True, slots=True)
class EngagementRule:
    """A compiled engagement rule; `index` is its position in CompiledRules.rule_ids."""

    index: int
    id: str
    tests: tuple[tuple[tuple[str, ...], Getter, Predicate], ...]  # (path, read, test)
    points: float
    cap_points: float
    cap_window_s: float
    flag: int  # 0 none, 1 disqualify, 2 requalify


@dataclass(frozen=True, slots=True)
class FitRule:
    """A compiled fit rule on one attribute."""

    id: str
    test: Predicate
    points: float
    disqualify: bool


@dataclass(frozen=True, slots=True)
class Attribute:
    """A compiled profile attribute: its sources, its fit rules and its BANT tests."""

    index: int
    name: str
    sources: tuple[tuple[str, ...], ...]
    transform: str
    numeric: bool
    fit_rules: tuple[FitRule, ...]
    bant_tests: tuple[tuple[int, Predicate], ...]  # (bit, test)


@dataclass(frozen=True, slots=True)
class AccountFitRule:
    """A compiled account fit rule: every (trait reader, test) must hold."""

    id: str
    tests: tuple[tuple[Getter, Predicate], ...]
    points: float


@dataclass(frozen=True, slots=True)
class AccountRules:
    """The compiled `accounts:` section."""

    top: int
    half_life_s: float
    fit: tuple[AccountFitRule, ...]
    tiers: tuple[Tier, ...]
    handoff_tier: int
    rearm_below: float
    from_email: bool
    #: Extra free-mail domains: exact ones, and prefixes of `name.*` ones ("gmx.").
    free_mail: frozenset[str]
    free_mail_prefixes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """Rules ready for evaluation; built once per rules version."""

    version: str
    source: str
    half_life_s: float
    basis: str
    floor: float
    ceiling: float
    tiers: tuple[Tier, ...]
    handoff_tier: int
    min_grade: int  # 1 = A ... 4 = D
    min_bant: int
    rearm_below: float
    grade_thresholds: tuple[float, float, float]  # A, B, C
    rule_ids: tuple[str, ...]
    engagement: tuple[EngagementRule, ...]
    by_type: Mapping[str, tuple[EngagementRule, ...]]
    attributes: tuple[Attribute, ...]
    #: root ("traits", "properties", "context") -> first key -> [(priority, attribute index)]
    source_index: Mapping[str, Mapping[str, tuple[tuple[int, int], ...]]]
    #: the `outcomes:` section, defaults filled in (streamscore.outcomes reads it)
    outcomes: OutcomeRules
    #: Negative points decay with the half-life too (decay.penalties); else they never do.
    decay_penalties: bool = False
    #: Track event names the rules name literally (`event: X` or `event: [X, Y]`): the label
    #: values of the custom-event metric, every other name counting as `other`.
    track_names: tuple[str, ...] = ()
    #: Whether any rule's `event` condition accepts a name (rules.mentions_event).
    event_tests: tuple[Predicate, ...] = ()
    #: The `accounts:` section; None when the rules roll nothing up to accounts.
    accounts: AccountRules | None = None

    def mentions_event(self, name: str) -> bool:
        """True when some rule's `event` condition accepts this track event name."""
        return any(test(name) for test in self.event_tests)

    def script_config(self) -> dict[str, Any]:
        """The arithmetic parameters the Redis script needs, JSON-serialisable."""
        return {
            "version": self.version,
            "half_life_ms": self.half_life_s * 1000.0,
            "basis_total": self.basis == "total",
            "floor": _finite_or_none(self.floor),
            "ceiling": _finite_or_none(self.ceiling),
            "tiers": [t.name for t in self.tiers],
            "enter": [_finite_or_none(t.enter) for t in self.tiers],
            "exit": [_finite_or_none(t.exit) for t in self.tiers],
            "handoff_tier": self.handoff_tier,
            "min_grade": self.min_grade,
            "min_bant": self.min_bant,
            "rearm_below": _finite_or_none(self.rearm_below),
            "grades": [_finite_or_none(g) for g in self.grade_thresholds],
            "rules": list(self.rule_ids),
            "caps": [
                [r.cap_points, r.cap_window_s * 1000.0] if r.cap_points else [0, 0]
                for r in self.engagement
            ],
            "attributes": [a.name for a in self.attributes],
        }

    def grade_of(self, fit_points: float) -> int:
        """Grade index (1 = A ... 4 = D) for a fit score."""
        for i, threshold in enumerate(self.grade_thresholds):
            if fit_points >= threshold:
                return i + 1
        return 4


def compile_getter(path: tuple[str, ...]) -> Getter:
    """A function reading `path` (e.g. properties.path) from an event; None when absent."""
    root, rest = path[0], path[1:]
    if root == "type":
        return attrgetter("type")
    if root == "event":
        return attrgetter("name")
    read_root = attrgetter(root)
    if len(rest) == 1:
        key = rest[0]
        return lambda event: read_root(event).get(key)

    def deep(event: Any) -> Any:
        value = read_root(event)
        for part in rest:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    return deep


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _compile_matcher(m: Matcher) -> Predicate:
    tests: list[Predicate] = []
    fields = m.model_fields_set
    if "exists" in fields:
        want = bool(m.exists)
        tests.append(lambda v: (v is not None) is want)
    if "equals" in fields:
        target = m.equals
        tests.append(lambda v: v == target)
    if m.in_ is not None:
        options = frozenset(x for x in m.in_ if isinstance(x, _SCALARS))
        tests.append(lambda v: isinstance(v, _SCALARS) and v in options)
    if m.not_in is not None:
        banned = frozenset(x for x in m.not_in if isinstance(x, _SCALARS))
        tests.append(lambda v: not (isinstance(v, _SCALARS) and v in banned))
    if m.prefix is not None:
        prefix = m.prefix
        tests.append(lambda v: isinstance(v, str) and v.startswith(prefix))
    if m.suffix is not None:
        suffix = m.suffix
        tests.append(lambda v: isinstance(v, str) and v.endswith(suffix))
    if m.contains is not None:
        part = m.contains
        tests.append(lambda v: isinstance(v, str) and part in v)
    if m.regex is not None:
        tests.append(_regex_test(re.compile(m.regex)))
    comparisons: tuple[tuple[float | None, Callable[[float, float], bool]], ...] = (
        (m.gte, float.__ge__),
        (m.gt, float.__gt__),
        (m.lte, float.__le__),
        (m.lt, float.__lt__),
    )
    for limit, op in comparisons:
        if limit is not None:
            tests.append(_numeric_test(op, limit))
    if len(tests) == 1:
        return tests[0]
    return lambda v: all(t(v) for t in tests)


def _regex_test(pattern: re.Pattern[str]) -> Predicate:
    # Regexes mostly run over user agents and referrers, which repeat a lot, and a search over
    # a long user agent costs several microseconds; the cache is per rule and bounded.
    @functools.lru_cache(maxsize=REGEX_CACHE_SIZE)
    def found(v: str) -> bool:
        return pattern.search(v) is not None

    return lambda v: isinstance(v, str) and found(v)


def _numeric_test(op: Callable[[float, float], bool], bound: float) -> Predicate:
    def test(v: Any) -> bool:
        num = to_number(v)
        return num is not None and op(num, bound)

    return test


def to_number(value: Any) -> float | None:
    """A finite float from a number or numeric string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        num = float(value)
    elif isinstance(value, str):
        try:
            num = float(value.replace(",", "").strip())
        except ValueError:
            return None
    else:
        return None
    return num if math.isfinite(num) else None


def compile_rules(spec: RulesSpec, source: str) -> CompiledRules:
    """Turn a validated spec into the structures evaluation uses."""
    tiers = [Tier(spec.tiers[0].name, -math.inf, -math.inf)]
    for t in spec.tiers[1:]:
        assert t.enter is not None  # checked by RulesSpec
        tiers.append(Tier(t.name, t.enter, t.enter if t.exit is None else t.exit))
    engagement: list[EngagementRule] = []
    for i, r in enumerate(spec.engagement):
        tests = tuple(
            (tuple(path.split(".")), compile_getter(tuple(path.split("."))), _compile_matcher(m))
            for path, m in r.when.items()
        )
        engagement.append(
            EngagementRule(
                index=i,
                id=r.id,
                tests=tests,
                points=r.points,
                cap_points=r.cap.points if r.cap else 0.0,
                cap_window_s=r.cap.window if r.cap else 0.0,
                flag=1 if r.disqualify else 2 if r.requalify else 0,
            )
        )
    by_type: dict[str, tuple[EngagementRule, ...]] = {}
    for event_type in KNOWN_EVENT_TYPES:
        # Indexed by type, so the type test itself is already passed and can be dropped.
        by_type[event_type] = tuple(
            replace(r, tests=tuple(t for t in r.tests if t[0] != ("type",)))
            for r in engagement
            if _may_match_type(spec.engagement[r.index], event_type)
        )
    bant_bits = {name: 1 << i for i, name in enumerate(BANT_CRITERIA)}
    attributes = []
    for i, (name, a) in enumerate(spec.attributes.items()):
        attributes.append(
            Attribute(
                index=i,
                name=name,
                sources=tuple(tuple(p.split(".")) for p in a.from_),
                transform=a.transform,
                numeric=a.kind == "number",
                fit_rules=tuple(
                    FitRule(f.id, _compile_matcher(f.when), f.points, f.disqualify)
                    for f in spec.fit
                    if f.attribute == name
                ),
                bant_tests=tuple(
                    (bant_bits[c], _compile_matcher(crit.when))
                    for c, crit in spec.bant.items()
                    if crit.attribute == name
                ),
            )
        )
    index: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for attr in attributes:
        for priority, path in enumerate(attr.sources):
            index.setdefault(path[0], {}).setdefault(path[1], []).append((priority, attr.index))
    source_index = {
        root: {key: tuple(entries) for key, entries in keys.items()} for root, keys in index.items()
    }
    handoff_tier = [t.name for t in spec.tiers].index(spec.handoff.tier)
    rearm = spec.handoff.rearm_below
    rearm_below = tiers[handoff_tier].exit if rearm is None else rearm
    return CompiledRules(
        version=spec.version,
        source=source,
        half_life_s=spec.decay.half_life,
        basis=spec.score.basis,
        floor=-math.inf if spec.score.floor is None else spec.score.floor,
        ceiling=math.inf if spec.score.ceiling is None else spec.score.ceiling,
        tiers=tuple(tiers),
        handoff_tier=handoff_tier,
        min_grade=GRADES.index(spec.handoff.min_grade) + 1,
        min_bant=spec.handoff.min_bant,
        rearm_below=rearm_below,
        grade_thresholds=(
            spec.grades.get("A", math.inf),
            spec.grades.get("B", math.inf),
            spec.grades.get("C", math.inf),
        ),
        rule_ids=tuple(r.id for r in engagement),
        engagement=tuple(engagement),
        by_type=by_type,
        attributes=tuple(attributes),
        source_index=source_index,
        outcomes=compile_outcomes(
            spec.outcomes,
            tuple(t.name for t in tiers),
            tiers[handoff_tier].exit,
            rearm_below,
        ),
        decay_penalties=spec.decay.penalties,
        track_names=_track_names(spec),
        event_tests=tuple(
            _compile_matcher(r.when["event"]) for r in spec.engagement if "event" in r.when
        ),
        accounts=None if spec.accounts is None else _compile_accounts(spec.accounts),
    )


def _trait_getter(path: tuple[str, ...]) -> Getter:
    """A function reading `path` from a traits mapping; None when absent."""

    def read(traits: Any) -> Any:
        value = traits
        for part in path:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    return read


def _compile_accounts(spec: AccountsSpec) -> AccountRules:
    tiers = [Tier(spec.tiers[0].name, -math.inf, -math.inf)]
    for t in spec.tiers[1:]:
        assert t.enter is not None  # checked by _check_accounts
        tiers.append(Tier(t.name, t.enter, t.enter if t.exit is None else t.exit))
    handoff_tier = [t.name for t in spec.tiers].index(spec.handoff.tier)
    rearm = spec.handoff.rearm_below
    return AccountRules(
        top=spec.top,
        half_life_s=spec.decay.half_life,
        fit=tuple(
            AccountFitRule(
                r.id,
                tuple(
                    (_trait_getter(tuple(path.split("."))), _compile_matcher(m))
                    for path, m in r.when.items()
                ),
                r.points,
            )
            for r in spec.fit
        ),
        tiers=tuple(tiers),
        handoff_tier=handoff_tier,
        rearm_below=tiers[handoff_tier].exit if rearm is None else rearm,
        from_email=spec.from_email,
        free_mail=frozenset(d for d in spec.free_mail if not d.endswith(".*")),
        free_mail_prefixes=tuple(d[:-1] for d in spec.free_mail if d.endswith(".*")),
    )


def _track_names(spec: RulesSpec) -> tuple[str, ...]:
    """The names rules give literally in an `event` condition (equals or in), sorted."""
    names: set[str] = set()
    for rule in spec.engagement:
        matcher = rule.when.get("event")
        if matcher is None:
            continue
        if "equals" in matcher.model_fields_set and isinstance(matcher.equals, str):
            names.add(matcher.equals)
        names.update(n for n in matcher.in_ or () if isinstance(n, str))
    return tuple(sorted(names))


def _may_match_type(rule: EngagementRuleSpec, event_type: str) -> bool:
    if "event" in rule.when and event_type != NAMED_EVENT_TYPE:
        return False  # only track events have a name
    matcher = rule.when.get("type")
    if matcher is None:
        return True
    return bool(_compile_matcher(matcher)(event_type))


# ---------------------------------------------------------------- loading


def _format_loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_rules_text(text: str, source: str) -> CompiledRules:
    """Validate and compile rules text; raise RulesError listing every problem with its location."""
    is_yaml = not source.endswith(".toml")
    try:
        data = yaml.safe_load(text) if is_yaml else tomllib.loads(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise RulesError(source, [f"{where}: not valid YAML: {exc.problem}"]) from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise RulesError(source, [f"not valid {'YAML' if is_yaml else 'TOML'}: {exc}"]) from None
    if not isinstance(data, dict):
        raise RulesError(source, ["top level must be a mapping (version, decay, engagement, ...)"])
    try:
        spec = RulesSpec.model_validate(data)
    except ValidationError as exc:
        located = [
            (
                tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p)),
                err["msg"].removeprefix("Value error, "),
            )
            for err in exc.errors()
        ]
        raise RulesError(source, _locate(located, text, is_yaml)) from None
    problems = cross_check(spec)
    if problems:
        raise RulesError(source, _locate(problems, text, is_yaml))
    return compile_rules(spec, source)


def _locate(problems: list[tuple[Loc, str]], text: str, is_yaml: bool) -> list[str]:
    lines = line_index(text, is_yaml)
    out = []
    for loc, msg in problems:
        line = _nearest_line(lines, loc)
        prefix = f"line {line}: " if line else ""
        out.append(f"{prefix}{_format_loc(loc)}: {msg}")
    return out


def _nearest_line(lines: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> int:
    for end in range(len(loc), -1, -1):
        key = tuple(p.rstrip("_") if isinstance(p, str) else p for p in loc[:end])
        if key in lines:
            return lines[key]
    return 0


def check_lines(text: str, source: str) -> tuple[bool, list[str]]:
    """What `streamscore rules check` prints for one file: an OK line, or one line per problem.

    `source` names the file in every line, and its suffix picks TOML over YAML.
    """
    try:
        rules = parse_rules_text(text, source)
    except RulesError as exc:
        return False, [f"{source}: {problem}" for problem in exc.problems]
    return True, [
        f"{source}: OK (version {rules.version}, {len(rules.engagement)} engagement rules, "
        f"{sum(len(a.fit_rules) for a in rules.attributes)} fit rules, "
        f"tiers {'/'.join(t.name for t in rules.tiers)})"
    ]


def load_rules(path: Path) -> CompiledRules:
    """Read, validate and compile a rules file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(str(path), [f"cannot read: {exc.strerror}"]) from None
    return parse_rules_text(text, str(path))
