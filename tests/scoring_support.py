"""Shared helpers for scoring tests: a compact rules set and event strategies."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from streamscore.scoring.rules import CompiledRules, parse_rules_text
from streamscore.scoring.state import CAP_WINDOWS_KEPT


def compact_rules_yaml(version: str, engagement: str) -> str:
    """A rules file of `engagement` rules with the compact profile, grades, BANT and tiers."""
    return f"version: {version}\n{COMPACT_HEADER}{engagement}{COMPACT_PROFILE_AND_TIERS}"


COMPACT_HEADER = """decay: {half_life: 1h}
score: {basis: total, floor: -50, ceiling: 200}
attributes:
  title: {from: [traits.title], transform: lower}
  size: {from: [traits.size], type: number}
engagement:
"""
COMPACT_PROFILE_AND_TIERS = """fit:
  - {id: exec, attribute: title, when: {regex: "chief|vp"}, points: 20}
  - {id: intern, attribute: title, when: {contains: intern}, points: -10}
  - {id: big, attribute: size, when: {gte: 500}, points: 15}
  - {id: rival, attribute: title, when: {equals: competitor}, disqualify: true}
grades: {A: 30, B: 15, C: 5}
bant:
  authority: {attribute: title, when: {regex: "chief|vp"}}
  budget: {attribute: size, when: {gte: 500}}
tiers:
  - {name: cold}
  - {name: warm, enter: 20, exit: 15}
  - {name: hot, enter: 45, exit: 35}
handoff: {tier: hot, min_grade: C, min_bant: 1, rearm_below: 25}
"""

#: Small numbers and a short half-life, so random sequences cross tiers, caps and re-arms often.
PARITY_RULES_YAML = compact_rules_yaml(
    "parity-1",
    """  - {id: view, when: {type: page_view}, points: 3, cap: {points: 9, window: 30m}}
  - {id: pricing, when: {type: page_view, properties.path: /pricing}, points: 12}
  - {id: click, when: {type: email_click}, points: 7}
  - {id: trial, when: {type: trial_signup}, points: 25, requalify: true}
  - {id: unsub, when: {type: unsubscribe}, points: -15}
  - {id: bot, when: {context.user_agent: {contains: bot}}, disqualify: true}
""",
)


def parity_rules() -> CompiledRules:
    """The compiled parity rules."""
    return parse_rules_text(PARITY_RULES_YAML, "parity.yaml")


RULES = parity_rules()
T0 = 1_760_000_000_000
MIN = 60_000
#: Capped page views kept within CAP_WINDOWS_KEPT windows of each other: 0.1's Lua pruned older
#: windows differently (tests/integration/test_codec_legacy.py runs it).
CAPPED_SPAN_MIN = CAP_WINDOWS_KEPT * 30  # the view rule's cap window is 30 min
assert RULES.engagement[RULES.rule_ids.index("view")].cap_window_s == 30 * 60


@dataclass(frozen=True)
class FakeEvent:
    """The fields of an event that scoring reads."""

    type: str
    properties: dict[str, object]
    context: dict[str, object]
    traits: dict[str, object]
    name: str | None = None  # a custom track event's name


EVENT_SHAPES = st.sampled_from(
    [
        FakeEvent("page_view", {"path": "/blog"}, {}, {}),
        FakeEvent("page_view", {"path": "/pricing"}, {}, {}),
        FakeEvent("email_click", {}, {}, {}),
        FakeEvent("trial_signup", {}, {}, {}),
        FakeEvent("unsubscribe", {}, {}, {}),
        FakeEvent("page_view", {"path": "/x"}, {"user_agent": "googlebot"}, {}),
        FakeEvent("identify", {}, {}, {"title": "VP Sales", "size": 900}),
        FakeEvent("identify", {}, {}, {"title": "Chief Revenue Officer"}),
        FakeEvent("trial_signup", {}, {}, {"title": "VP Marketing"}),
        FakeEvent("identify", {}, {}, {"title": "Intern"}),
        FakeEvent("identify", {}, {}, {"title": "competitor"}),
        FakeEvent("identify", {}, {}, {"size": "120"}),
    ]
)

#: (lead, minutes offset, event shape, id reuse): times wander back and forth to make late events.
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["alice", "bob", "ca{r}ol:*"]),
        st.integers(min_value=0, max_value=900),
        EVENT_SHAPES,
        st.booleans(),
    ),
    min_size=1,
    max_size=60,
)
