"""decide(): which rules an event earns and which profile attributes it sets."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from streamscore.scoring.engine import DISQUALIFY, NO_FLAG, REQUALIFY, Decision, decide
from streamscore.scoring.rules import (
    KNOWN_EVENT_TYPES,
    CompiledRules,
    Matcher,
    RulesSpec,
    parse_rules_text,
)
from tests.scoring_support import parity_rules

ENGINE_RULES_YAML = """
version: engine-1
decay: {half_life: 1d}
attributes:
  title: {from: [traits.title, properties.job_title], transform: lower}
  domain: {from: [traits.email], transform: email_domain}
  employees: {from: [traits.employees, traits.company_size], type: number}
  country: {from: [traits.country, context.country]}
engagement:
  - {id: any_view, when: {type: page_view}, points: 1}
  - {id: pricing, when: {type: page_view, properties.path: {prefix: /pricing}}, points: 10}
  - {id: demo_path, when: {type: page_view, properties.path: {regex: "^/(demo|book)"}}, points: 8}
  - {id: api_search, when: {type: page_view, properties.query: {contains: api}}, points: 2}
  - {id: long_read, when: {type: page_view, properties.seconds: {gte: 60}}, points: 3}
  - {id: very_long_read, when: {type: page_view, properties.seconds: {gt: 300}}, points: 2}
  - {id: bounce, when: {type: page_view, properties.seconds: {lt: 5}}, points: -1}
  - {id: has_utm, when: {type: page_view, context.campaign.source: {exists: true}}, points: 1}
  - {id: direct, when: {type: page_view, context.referrer: {exists: false}}, points: 1}
  - {id: pdf, when: {type: download, properties.file: {suffix: .pdf}}, points: 4}
  - {id: small_file, when: {type: download, properties.size_mb: {lte: 1}}, points: 1}
  - {id: q3_click, when: {type: email_click, properties.campaign: q3-launch}, points: 6}
  - {id: launch_click, when: {type: email_click, properties.campaign: [q3-launch, q4-launch]},
     points: 3}
  - {id: real_open, when: {type: email_open, properties.list: {not_in: [newsletter]}}, points: 2}
  - {id: emails, when: {type: [email_open, email_click]}, points: 1}
  - {id: demo_request, when: {type: demo_request}, points: 30, requalify: true}
  - {id: contact, when: {type: contact_request}, requalify: true}
  - {id: bot, when: {context.user_agent: {regex: "(?i)bot|crawler"}}, disqualify: true}
  - {id: unsubscribe, when: {type: unsubscribe}, points: -20}
  - {id: form_sales, when: {event: Form Submitted, properties.form: contact-sales}, points: 20}
  - {id: liked, when: {event: LinkedIn Post Liked}, points: 3}
  - {id: not_a_form, when: {event: {not_in: [Form Submitted]}}, points: 1}
  - {id: webinar_track, when: {type: track, event: {regex: "^Webinar"}}, points: 5}
fit:
  - {id: exec, attribute: title, when: {regex: "chief|vp"}, points: 20}
  - {id: revenue_role, attribute: title, when: {contains: revenue}, points: 5}
  - {id: intern, attribute: title, when: {contains: intern}, points: -10}
  - {id: big, attribute: employees, when: {gte: 1000}, points: 15}
  - {id: mid, attribute: employees, when: {gte: 100, lt: 1000}, points: 8}
  - {id: free_mail, attribute: domain, when: [gmail.com, yahoo.com], points: -5}
  - {id: rival, attribute: domain, when: {equals: rival.io}, disqualify: true}
  - {id: embargo, attribute: country, when: [kp, ir], disqualify: true}
grades: {A: 30, B: 15, C: 5}
bant:
  authority: {attribute: title, when: {regex: "chief|vp"}}
  budget: {attribute: employees, when: {gte: 1000}}
  need: {attribute: domain, when: {exists: true}}
  timeline: {attribute: country, when: {in: [us, gb]}}
tiers:
  - {name: cold}
  - {name: warm, enter: 20, exit: 15}
handoff: {tier: warm}
"""

RULES = parse_rules_text(ENGINE_RULES_YAML, "engine.yaml")
SPEC = RulesSpec.model_validate(yaml.safe_load(ENGINE_RULES_YAML))
ATTR = {a.name: a.index for a in RULES.attributes}
BIT = {"budget": 1, "authority": 2, "need": 4, "timeline": 8}


@dataclass(frozen=True)
class Ev:
    type: str
    properties: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)
    traits: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None


def awarded(decision: Decision, rules: CompiledRules = RULES) -> dict[str, float]:
    return {rules.rule_ids[i]: p for i, p in decision.awards}


def update_for(decision: Decision, name: str) -> Any:
    hits = [u for u in decision.attributes if u.attribute == ATTR[name]]
    assert len(hits) <= 1
    return hits[0] if hits else None


# ------------------------------------------------------------------ matchers on realistic events

REFERRED = {"referrer": "https://news.example.com"}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        # prefix, and the catch-all; `exists: false` on a missing referrer
        (Ev("page_view", {"path": "/pricing/enterprise"}), {"any_view", "pricing", "direct"}),
        (Ev("page_view", {"path": "/blog/pricing"}, REFERRED), {"any_view"}),
        # regex
        (Ev("page_view", {"path": "/book-a-demo"}, REFERRED), {"any_view", "demo_path"}),
        (Ev("page_view", {"path": "/x/demo"}, REFERRED), {"any_view"}),
        # contains
        (Ev("page_view", {"query": "rest api auth"}, REFERRED), {"any_view", "api_search"}),
        # gte / gt / lt on numbers and numeric strings
        (Ev("page_view", {"seconds": 60}, REFERRED), {"any_view", "long_read"}),
        (Ev("page_view", {"seconds": "300"}, REFERRED), {"any_view", "long_read"}),
        (
            Ev("page_view", {"seconds": "1,200"}, REFERRED),
            {"any_view", "long_read", "very_long_read"},
        ),
        (Ev("page_view", {"seconds": 4.5}, REFERRED), {"any_view", "bounce"}),
        (Ev("page_view", {"seconds": "soon"}, REFERRED), {"any_view"}),
        (Ev("page_view", {"seconds": True}, REFERRED), {"any_view"}),
        (Ev("page_view", {"seconds": "nan"}, REFERRED), {"any_view"}),
        # exists on a nested path
        (
            Ev("page_view", {}, {**REFERRED, "campaign": {"source": "linkedin"}}),
            {"any_view", "has_utm"},
        ),
        (Ev("page_view", {}, {**REFERRED, "campaign": "flat"}), {"any_view"}),
        # suffix, lte
        (Ev("download", {"file": "guide.pdf", "size_mb": "0.8"}), {"pdf", "small_file"}),
        (Ev("download", {"file": "guide.pdf.zip", "size_mb": 1.01}), set()),
        # equals (a bare scalar) and in (a bare list)
        (Ev("email_click", {"campaign": "q3-launch"}), {"q3_click", "launch_click", "emails"}),
        (Ev("email_click", {"campaign": "q4-launch"}), {"launch_click", "emails"}),
        (Ev("email_click", {"campaign": "Q3-LAUNCH"}), {"emails"}),
        # not_in; a missing value is not in the list
        (Ev("email_open", {"list": "newsletter"}), {"emails"}),
        (Ev("email_open", {"list": "product"}), {"real_open", "emails"}),
        (Ev("email_open"), {"real_open", "emails"}),
        # a type the rules do not name earns nothing
        (Ev("webinar_signup", {"path": "/pricing"}), set()),
        # negative points
        (Ev("unsubscribe"), {"unsubscribe"}),
    ],
)
def test_conditions_select_the_rules(event: Ev, expected: set[str]) -> None:
    decision = decide(event, RULES)
    assert set(awarded(decision)) == expected
    for rule_id, points in awarded(decision).items():
        assert points == RULES.engagement[RULES.rule_ids.index(rule_id)].points


def test_matching_rules_add_up() -> None:
    event = Ev("page_view", {"path": "/pricing", "seconds": 400}, {"campaign": {"source": "g"}})
    decision = decide(event, RULES)
    expected = {
        "any_view": 1,
        "pricing": 10,
        "long_read": 3,
        "very_long_read": 2,
        "has_utm": 1,
        "direct": 1,
    }
    assert awarded(decision) == expected
    assert sum(p for _, p in decision.awards) == sum(expected.values())
    assert decision.flag == NO_FLAG


def test_flags() -> None:
    assert decide(Ev("demo_request"), RULES).flag == REQUALIFY
    assert awarded(decide(Ev("contact_request"), RULES)) == {}
    assert decide(Ev("contact_request"), RULES).flag == REQUALIFY
    bot_view = Ev("page_view", {}, {"user_agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"})
    assert decide(bot_view, RULES).flag == DISQUALIFY
    assert "any_view" in awarded(decide(bot_view, RULES))


@pytest.mark.parametrize("bot_first", [False, True])
def test_disqualify_beats_requalify_on_the_same_event(bot_first: bool) -> None:
    rules_yaml = """
version: dq-1
decay: {half_life: 1d}
engagement:
  - {id: demo, when: {type: demo_request}, points: 30, requalify: true}
  - {id: bot, when: {context.user_agent: {contains: bot}}, disqualify: true}
  - {id: contact, when: {type: [demo_request, contact_request]}, requalify: true}
tiers: [{name: cold}, {name: warm, enter: 10}]
handoff: {tier: warm}
"""
    if bot_first:
        lines = rules_yaml.splitlines()
        bot = next(i for i, line in enumerate(lines) if "id: bot" in line)
        lines.insert(bot - 1, lines.pop(bot))
        rules_yaml = "\n".join(lines)
    rules = parse_rules_text(rules_yaml, "dq.yaml")
    assert (rules.rule_ids[0] == "bot") is bot_first
    decision = decide(Ev("demo_request", {}, {"user_agent": "a-bot/1.0"}), rules)
    assert decision.flag == DISQUALIFY
    assert awarded(decision, rules) == {"demo": 30}
    assert decide(Ev("demo_request", {}, {"user_agent": "Firefox"}), rules).flag == REQUALIFY


# ------------------------------------------------------------------ attributes


def test_first_non_empty_source_wins_and_is_lowered() -> None:
    event = Ev("page_view", {"job_title": "VP Sales"}, {}, {"title": ""})
    assert update_for(decide(event, RULES), "title").value == "vp sales"
    event = Ev("page_view", {"job_title": "VP Sales"}, {}, {"title": "Chief Revenue Officer"})
    assert update_for(decide(event, RULES), "title").value == "chief revenue officer"
    assert update_for(decide(Ev("page_view", {"job_title": None}), RULES), "title") is None


def test_email_domain_transform() -> None:
    update = update_for(
        decide(Ev("identify", traits={"email": "Ann.Lee@Example.COM"}), RULES), "domain"
    )
    assert update.value == "example.com"
    assert update.bant_mask == BIT["need"]
    assert update.fit_points == 0 and not update.disqualify


@pytest.mark.parametrize(
    ("raw", "number"),
    [(1200, 1200.0), ("1,200", 1200.0), (" 950 ", 950.0), ("12.5", 12.5), (2e3, 2000.0)],
)
def test_numeric_attributes_parse_numbers_and_numeric_strings(raw: object, number: float) -> None:
    update = update_for(decide(Ev("identify", traits={"employees": raw}), RULES), "employees")
    assert float(update.value) == number
    expected_points = 15 if number >= 1000 else 8 if number >= 100 else 0
    assert update.fit_points == expected_points
    assert update.bant_mask == (BIT["budget"] if number >= 1000 else 0)


@pytest.mark.parametrize("raw", ["many", "", True, [1000], {"n": 1000}, "inf"])
def test_non_numeric_values_set_no_numeric_attribute(raw: object) -> None:
    assert update_for(decide(Ev("identify", traits={"employees": raw}), RULES), "employees") is None


def test_second_numeric_source_is_used_when_the_first_is_missing() -> None:
    update = update_for(decide(Ev("identify", traits={"company_size": "150"}), RULES), "employees")
    assert float(update.value) == 150.0 and update.fit_points == 8


def test_fit_points_and_bant_masks_are_per_attribute() -> None:
    traits = {
        "title": "Chief Revenue Officer",
        "email": "cro@gmail.com",
        "employees": 5000,
        "country": "us",
    }
    decision = decide(Ev("identify", traits=traits), RULES)
    title = update_for(decision, "title")
    assert title.fit_points == 25 and dict(title.reasons) == {"exec": 20, "revenue_role": 5}
    assert title.bant_mask == BIT["authority"]
    domain = update_for(decision, "domain")
    assert domain.fit_points == -5 and domain.bant_mask == BIT["need"]
    assert update_for(decision, "employees").bant_mask == BIT["budget"]
    assert update_for(decision, "country").bant_mask == BIT["timeline"]
    assert not any(u.disqualify for u in decision.attributes)
    assert decision.awards == () and decision.flag == NO_FLAG


def test_country_falls_back_to_context_and_can_disqualify() -> None:
    update = update_for(decide(Ev("page_view", context={"country": "kp"}), RULES), "country")
    assert update.value == "kp" and update.disqualify
    assert update.fit_points == 0 and update.reasons == ()
    rival = update_for(decide(Ev("identify", traits={"email": "x@rival.io"}), RULES), "domain")
    assert rival.disqualify


# ------------------------------------------------------------------ property: the oracle


def _lookup(event: Ev, path: str) -> Any:
    root, *rest = path.split(".")
    if root == "type":
        return event.type
    if root == "event":
        return event.name
    value: Any = {"properties": event.properties, "context": event.context, "traits": event.traits}[
        root
    ]
    for part in rest:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        num = float(value.replace(",", "").strip()) if isinstance(value, str) else float(value)
    except ValueError:
        return None
    return num if math.isfinite(num) else None


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def holds(m: Matcher, v: Any) -> bool:
    """A plain reading of the matcher documentation: every test given must hold."""
    given_tests = m.model_fields_set
    results = []
    if "exists" in given_tests:
        results.append((v is not None) == m.exists)
    if "equals" in given_tests:
        results.append(v == m.equals)
    if m.in_ is not None:
        results.append(_scalar(v) and any(v == x for x in m.in_))
    if m.not_in is not None:
        results.append(not (_scalar(v) and any(v == x for x in m.not_in)))
    if m.prefix is not None:
        results.append(isinstance(v, str) and v.startswith(m.prefix))
    if m.suffix is not None:
        results.append(isinstance(v, str) and v.endswith(m.suffix))
    if m.contains is not None:
        results.append(isinstance(v, str) and m.contains in v)
    if m.regex is not None:
        results.append(isinstance(v, str) and re.search(m.regex, v) is not None)
    num = _number(v)
    for bound, ok in (
        (m.gte, operator.ge),
        (m.gt, operator.gt),
        (m.lte, operator.le),
        (m.lt, operator.lt),
    ):
        if bound is not None:
            results.append(num is not None and ok(num, bound))
    return all(results)


SCALAR = (
    st.text(max_size=8)
    | st.integers(-10, 5000)
    | st.floats(allow_nan=False, allow_infinity=True)
    | st.booleans()
    | st.none()
)
ANY_VALUE = st.recursive(
    SCALAR,
    lambda inner: (
        st.lists(inner, max_size=2)
        | st.dictionaries(st.sampled_from(["source", "path", "n"]), inner, max_size=2)
    ),
    max_leaves=4,
)
NUMBERS: list[Any] = [0, 4, 4.5, 60, 300, 301, 1, 99, 100, 999.5, 1000, True, None]
NUMBERS += ["60", "1,200", "0.5", "1", "5000", "nan", "inf", "many"]
TITLES = ["CHIEF of staff", "VP Sales", "intern", "", "Chief Revenue Officer", None, " "]
# Per key, mostly values the rules test for (so rules match often), sometimes anything at all.
POOLS: dict[str, list[Any]] = {
    "path": ["/pricing", "/pricing/x", "/PRICING", "/demo", "/book-a-demo", "/blog", ""],
    "query": ["api", "docs api", "API"],
    "seconds": NUMBERS,
    "size_mb": NUMBERS,
    "employees": NUMBERS,
    "company_size": NUMBERS,
    "file": ["guide.pdf", "x.PDF", "a.pdf.zip"],
    "campaign": ["q3-launch", "q4-launch", "Q3-LAUNCH", {"source": "ads"}, {"source": None}],
    "list": ["newsletter", "product"],
    "user_agent": ["Googlebot/2.1", "crawler-7", "Firefox", "BOT"],
    "referrer": ["https://news.example.com", None, ""],
    "country": ["kp", "us", "gb", "IR", " us "],
    "title": TITLES,
    "job_title": TITLES,
    "email": ["ann@gmail.com", "x@rival.io", "@", "NoAt", "a@Yahoo.com", "b@corp.example"],
    "form": ["contact-sales", "newsletter"],
}


def fields(*names: str) -> st.SearchStrategy[dict[str, Any]]:
    """Optional keys among `names`, each mostly from its pool."""
    return st.fixed_dictionaries(
        {}, optional={n: st.one_of(st.sampled_from(POOLS[n]), ANY_VALUE) for n in names}
    )


TRACK_NAMES = ["Form Submitted", "LinkedIn Post Liked", "Webinar Attended", "Order Completed"]
EVENTS = st.builds(
    Ev,
    st.sampled_from(("page_view", "page_view", "track", *KNOWN_EVENT_TYPES)),
    fields("path", "query", "seconds", "file", "size_mb", "campaign", "list", "form", "job_title"),
    fields("user_agent", "referrer", "country", "campaign"),
    fields("title", "email", "employees", "company_size", "country"),
    st.none() | st.sampled_from(TRACK_NAMES) | st.text(max_size=8),
).map(lambda e: e if e.type == "track" else Ev(e.type, e.properties, e.context, e.traits))


@settings(max_examples=100, deadline=None)
@given(event=EVENTS)
def test_awards_and_flag_are_exactly_the_rules_whose_conditions_hold(event: Ev) -> None:
    decision = decide(event, RULES)
    holding = [
        i
        for i, rule in enumerate(SPEC.engagement)
        if all(holds(m, _lookup(event, path)) for path, m in rule.when.items())
        # A rule with an `event` condition is about custom track events only.
        and ("event" not in rule.when or event.type == "track")
    ]
    for index, points in decision.awards:
        assert index in holding
        assert points == SPEC.engagement[index].points
    assert [i for i, _ in decision.awards] == [i for i in holding if SPEC.engagement[i].points]
    flags = {
        DISQUALIFY if SPEC.engagement[i].disqualify else REQUALIFY
        for i in holding
        if SPEC.engagement[i].disqualify or SPEC.engagement[i].requalify
    }
    expected_flag = DISQUALIFY if DISQUALIFY in flags else REQUALIFY if flags else NO_FLAG
    assert decision.flag == expected_flag
    # Every attribute update is worth what its fit rules and BANT criteria say of its value.
    names = list(SPEC.attributes)
    for update in decision.attributes:
        name = names[update.attribute]
        value: Any = float(update.value) if SPEC.attributes[name].kind == "number" else update.value
        fits = [f for f in SPEC.fit if f.attribute == name and holds(f.when, value)]
        assert math.isclose(update.fit_points, sum(f.points for f in fits))
        assert update.disqualify == any(f.disqualify for f in fits)
        mask = sum(
            BIT[c]
            for c, crit in SPEC.bant.items()
            if crit.attribute == name and holds(crit.when, value)
        )
        assert update.bant_mask == mask


def test_a_huge_trait_is_kept_to_its_first_characters() -> None:
    """A tracker may send megabytes in a trait; the state and every view keep 512 characters."""
    from streamscore.scoring.engine import MAX_ATTRIBUTE_CHARS

    huge = "VP " + "x" * (4 * 1024 * 1024)
    updates = decide(Ev("identify", traits={"title": huge}), RULES).attributes
    (update,) = [u for u in updates if RULES.attributes[u.attribute].name == "title"]
    assert len(update.value) == MAX_ATTRIBUTE_CHARS
    assert update.value == huge[:MAX_ATTRIBUTE_CHARS].lower()


# ------------------------------------------------------------------ custom track events by name


def test_track_events_score_by_name_with_the_same_conditions_language() -> None:
    sales = Ev("track", {"form": "contact-sales"}, name="Form Submitted")
    newsletter = Ev("track", {"form": "newsletter"}, name="Form Submitted")
    liked = Ev("track", name="LinkedIn Post Liked")
    assert awarded(decide(sales, RULES)) == {"form_sales": 20}
    assert awarded(decide(newsletter, RULES)) == {}
    assert awarded(decide(liked, RULES)) == {"liked": 3, "not_a_form": 1}
    assert awarded(decide(Ev("track", name="Webinar Attended"), RULES)) == {
        "not_a_form": 1,
        "webinar_track": 5,
    }
    # A rule about names never matches an event without one, even a negated test.
    assert "not_a_form" not in awarded(decide(Ev("page_view", {"path": "/blog"}), RULES))
    # Rules without a type still see track events (the bot rule reads the user agent).
    bot = Ev("track", context={"user_agent": "Googlebot/2.1"}, name="Order Completed")
    assert decide(bot, RULES).flag == DISQUALIFY


def test_the_rules_know_which_track_names_they_mention() -> None:
    assert RULES.track_names == ("Form Submitted", "LinkedIn Post Liked")
    assert RULES.mentions_event("Form Submitted")
    assert RULES.mentions_event("Webinar Q3")  # by the regex
    # `not_in: [Form Submitted]` accepts every other name: every name is mentioned here.
    assert RULES.mentions_event("Order Completed")
    plain = parse_rules_text(ENGINE_RULES_YAML.replace("  - {id: not_a_form", "  #"), "x.yaml")
    assert not plain.mentions_event("Order Completed")
    assert plain.mentions_event("LinkedIn Post Liked")
    # A rules file without any `event` condition mentions no name at all.
    old = parity_rules()
    assert old.track_names == () and not old.mentions_event("Form Submitted")
