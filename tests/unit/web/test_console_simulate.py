"""The simulator: the worker's parser and arithmetic on a copy of the lead; nothing kept."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamscore.errors import InvalidEvent
from streamscore.events.envelope import Event, Limits
from streamscore.events.timefmt import format_time_ms
from streamscore.scoring import reference, state
from streamscore.scoring.engine import decide
from streamscore.scoring.rules import CompiledRules, load_rules
from streamscore.store.codec import encode_lead
from streamscore.web.console.simulate import event_of, parse_pasted, simulate
from tests.conftest import RULES_FILE
from tests.state_support import DAY, HOUR, RULE_VARIANTS, SHAPES, T0
from tests.unit.web.test_console_queue import EVENTS, LEADS, play

LIMITS = Limits(max_future_skew_ms=300_000, max_age_ms=10 * 365 * DAY)


@settings(max_examples=150, deadline=None)
@given(
    events=EVENTS,
    rules=st.sampled_from(RULE_VARIANTS),
    lead=st.sampled_from([*LEADS, "new-lead"]),
    shape=st.integers(0, len(SHAPES) - 1),
    delay_ms=st.sampled_from([-HOUR, 0, HOUR, 3 * DAY]),
)
def test_the_answer_is_the_reference_after_the_event_and_the_lead_is_untouched(
    events: list[tuple[str, int, int]],
    rules: CompiledRules,
    lead: str,
    shape: int,
    delay_ms: int,
) -> None:
    leads, refs, clock = play(events, rules)
    stored = leads.get(lead)
    before_bytes = None if stored is None else encode_lead(stored)
    shown = SHAPES[shape]
    event = Event("sim-1", lead, shown.type, clock + delay_ms, shown.properties,
                  shown.context, shown.traits, shown.name)  # fmt: skip
    result = simulate(stored, event, rules, 0)
    if stored is not None:
        assert encode_lead(stored) == before_bytes, "the simulator changed the lead"
    ref = refs.get(lead, reference.LeadState(lead))
    at = event.time_ms if ref.last_ms is None else max(ref.last_ms, event.time_ms)
    outputs = reference.apply_event(ref, rules, "sim-1", event.time_ms, decide(shown, rules), 0)
    assert outputs is not None
    reference.advance(ref, rules, at)
    score = reference.score_at(ref, rules, at)
    assert math.isclose(result.after["score"], score, abs_tol=2e-3)
    assert result.after["tier"] == rules.tiers[ref.tier].name
    assert [(o.kind, o.new_tier) for o in result.outputs] == [(o.kind, o.new_tier) for o in outputs]
    assert result.known is (stored is not None)
    assert result.at == format_time_ms(at)


def test_a_seen_event_id_changes_nothing() -> None:
    rules = RULE_VARIANTS[0]
    lead = state.new_lead("ann")
    trial = SHAPES[7]
    state.apply_event(lead, rules, "e1", T0, decide(trial, rules), HOUR, [])
    again = Event("e1", "ann", trial.type, T0 + 1000, {}, {}, {})
    result = simulate(lead, again, rules, HOUR)
    assert result.duplicate and result.outputs == ()
    assert result.after["score"] == result.before["score"]
    assert not simulate(lead, again._replace(event_id="e2"), rules, HOUR).duplicate


def test_a_pasted_message_is_parsed_as_the_worker_parses_it() -> None:
    now = T0
    native = {"event_id": "n1", "lead_id": "ann", "type": "email_click",
              "time": format_time_ms(now - 1000), "properties": {"campaign": "x"}}  # fmt: skip
    event = parse_pasted(orjson.dumps(native).decode(), now, LIMITS)
    assert (event.lead_id, event.type, event.time_ms) == ("ann", "email_click", now - 1000)
    segment = {"messageId": "m1", "type": "track", "event": "Demo Requested",
               "userId": "<b>bob</b>", "timestamp": format_time_ms(now)}  # fmt: skip
    event = parse_pasted(orjson.dumps(segment).decode(), now, LIMITS)
    assert (event.lead_id, event.type) == ("<b>bob</b>", "demo_request")
    refused = {
        "{not json": "malformed_json",
        "[1, 2]": "not_an_object",
        orjson.dumps({**native, "type": "teleport"}).decode(): "unknown_type",
        orjson.dumps({**native, "time": "2020-02-30T00:00:00Z"}).decode(): "bad_time",
        orjson.dumps({**native, "lead_id": " "}).decode(): "bad_lead_id",
    }
    for text, reason in refused.items():
        with pytest.raises(InvalidEvent) as info:
            parse_pasted(text, now, LIMITS)
        assert info.value.reason == reason, (text, info.value)


def test_a_picked_lead_and_type_become_a_native_event_at_now() -> None:
    rules = load_rules(RULES_FILE)
    event = event_of("ann", "page_view", '{"path": "/pricing"}', "", T0, LIMITS)
    assert (event.lead_id, event.type, event.time_ms) == ("ann", "page_view", T0)
    result = simulate(None, event, rules, 0)
    assert [rule for rule, _ in result.matched] == ["page_view", "pricing_page"]
    assert result.after["score"] == 11 and not result.known
    traits = '{"title": "CEO", "company_size": 5000}'
    identify = event_of("ann", "identify", "", traits, T0, LIMITS)
    result = simulate(None, identify, rules, 0)
    assert [name for name, _, _ in result.attributes] == ["title", "company_size"]
    assert result.after["fit"] == 45 and result.after["grade"] == "B"
    for properties, reason in (("[1]", "not_an_object"), ("{x", "malformed_json")):
        with pytest.raises(InvalidEvent) as info:
            event_of("ann", "page_view", properties, "", T0, LIMITS)
        assert info.value.reason == reason
