"""Rules variants and event-sequence strategies for the state.py tests (parity, codec, explain)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from streamscore.scoring.rules import CompiledRules, parse_rules_text
from tests.scoring_support import compact_rules_yaml

T0 = 1_760_000_000_000
SECOND = 1000
MIN = 60 * SECOND
HOUR = 60 * MIN
DAY = 24 * HOUR

# Two rules of 3 points on one page view (view and docs) tie in the reasons; a capped rule with
# a 30 min window and one with a 1 day window; two penalties, a disqualifier and a requalifier.
ENGAGEMENT = """  - {id: view, when: {type: page_view}, points: 3, cap: {points: 9, window: 30m}}
  - {id: docs, when: {type: page_view, properties.path: /docs}, points: 3}
  - {id: pricing, when: {type: page_view, properties.path: /pricing}, points: 12}
  - {id: careers, when: {type: page_view, properties.path: /careers}, points: -3}
  - {id: click, when: {type: email_click}, points: 7}
  - {id: open, when: {type: email_open}, points: 2, cap: {points: 4, window: 1d}}
  - {id: trial, when: {type: trial_signup}, points: 25, requalify: true}
  - {id: unsub, when: {type: unsubscribe}, points: -15}
  - {id: bot, when: {context.user_agent: {contains: bot}}, disqualify: true}
  - {id: form, when: {event: Form Submitted, properties.form: contact-sales}, points: 20}
  - {id: liked, when: {event: [Post Liked, Post Shared]}, points: 3, cap: {points: 6, window: 1d}}
  - {id: webinar_any, when: {event: {prefix: "Webinar "}}, points: 5}
"""


def variant_yaml(half_life: str, penalties: bool, basis: str = "total") -> str:
    """The compact rules with this half-life, decay.penalties and score basis."""
    version = f"v-{half_life}-{'dp' if penalties else 'fp'}-{basis}"
    text = compact_rules_yaml(version, ENGAGEMENT)
    decay = f"decay: {{half_life: {half_life}, penalties: {str(penalties).lower()}}}"
    text = text.replace("decay: {half_life: 1h}", decay)
    return text.replace("basis: total", f"basis: {basis}")


def variant(half_life: str, penalties: bool, basis: str = "total") -> CompiledRules:
    """Compiled variant_yaml."""
    return parse_rules_text(variant_yaml(half_life, penalties, basis), "variant.yaml")


#: A 1 min half-life re-anchors after 500 min; a 1 h one after about 3 weeks; 14 d rarely.
RULE_VARIANTS: tuple[CompiledRules, ...] = (
    variant("1h", False),
    variant("1h", True),
    variant("1m", False),
    variant("1m", True),
    variant("14d", False),
    variant("14d", True),
    variant("1h", False, "engagement"),
)
RULES_1H = RULE_VARIANTS[0]


@dataclass(frozen=True)
class Ev:
    """A minimal scorable event."""

    type: str
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # a custom track event's name


VIEW = Ev("page_view", {"path": "/blog"})
SHAPES: tuple[Ev, ...] = (
    VIEW,
    Ev("page_view", {"path": "/docs"}),
    Ev("page_view", {"path": "/pricing"}),
    Ev("page_view", {"path": "/careers"}),
    Ev("page_view", {"path": "/x"}, {"user_agent": "googlebot"}),
    Ev("email_click"),
    Ev("email_open"),
    Ev("trial_signup"),
    Ev("unsubscribe"),
    Ev("identify", traits={"title": "VP Sales", "size": 900}),
    Ev("identify", traits={"title": "Chief Revenue Officer"}),
    Ev("trial_signup", traits={"title": "VP Marketing"}),
    Ev("identify", traits={"title": "Intern"}),
    Ev("identify", traits={"title": "competitor"}),
    Ev("identify", traits={"size": "120"}),
    # Custom track events (item 2): scored by name, by name and property, by name prefix, and
    # a name no rule mentions.
    Ev("track", {"form": "contact-sales"}, name="Form Submitted"),
    Ev("track", {"form": "newsletter"}, name="Form Submitted"),
    Ev("track", name="Post Liked"),
    Ev("track", name="Post Shared"),
    Ev("track", name="Webinar Attended"),
    Ev("track", name="Order Completed"),
    Ev("track", {"path": "/docs"}, {"user_agent": "a bot"}, name="Post Liked"),
)

#: Gaps between steps (ms): bursts, hours, days and months, so spans reach years.
GAPS = st.sampled_from([0, 0, SECOND, MIN, 5 * MIN, 30 * MIN, 2 * HOUR, DAY, 30 * DAY])
#: How far behind the clock an event's time is: most on time, some minutes to months late.
LATENESS = st.sampled_from([0, 0, 0, 0, 3 * MIN, 2 * HOUR, 6 * HOUR, 3 * DAY, 60 * DAY])


@dataclass(frozen=True)
class Step:
    """One event: its lead, time, shape and id (a reused id repeats an earlier step's)."""

    lead: str
    gap_ms: int
    late_ms: int
    shape: int
    reuse: int | None  # repeat the id of step (reuse % index), if set


STEPS = st.lists(
    st.builds(
        Step,
        lead=st.sampled_from(["ann", "bob", "c{a}l:*"]),
        gap_ms=GAPS,
        late_ms=LATENESS,
        shape=st.integers(0, len(SHAPES) - 1),
        reuse=st.one_of(st.none(), st.none(), st.none(), st.integers(0, 10_000)),
    ),
    min_size=1,
    max_size=60,
)
DEDUP_WINDOWS = st.sampled_from([0, HOUR, 7 * DAY])


def timeline(steps: list[Step]) -> list[tuple[str, str, int, Ev]]:
    """(lead, event id, time, event) per step."""
    clock = T0
    out: list[tuple[str, str, int, Ev]] = []
    ids: list[str] = []
    for i, step in enumerate(steps):
        clock += step.gap_ms
        event_id = ids[step.reuse % i] if step.reuse is not None and i else f"e{i}"
        ids.append(event_id)
        out.append((step.lead, event_id, clock - step.late_ms, SHAPES[step.shape]))
    return out
