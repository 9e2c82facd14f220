"""States written by streamscore 0.1's Lua engine decode (store/codec.py) to what the reference
says, and scoring/state.py carries on from them as the reference does."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, event, given, settings

from streamscore.scoring import reference, state
from streamscore.scoring.engine import decide
from streamscore.scoring.outputs import Output
from streamscore.store.codec import decode_lead, encode_lead
from streamscore.store.keys import KeySpace
from tests.integration.legacy_v01 import V01Event, apply_v01
from tests.scoring_support import CAPPED_SPAN_MIN, MIN, RULES, STEPS, T0

DEDUP_MS = 3_600_000  # the window in CONFIG


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def timed(steps: list[Any]) -> list[tuple[str, str, int, Any]]:
    """(lead, event id, time, event) as test_lua_parity builds them (capped views kept close)."""
    out = []
    for offset, (lead, minutes, shape, reuse_id) in enumerate(steps):
        capped = shape.type == "page_view"
        t = T0 + (minutes % (CAPPED_SPAN_MIN + 1) if capped else minutes) * MIN
        out.append((lead, "dup-id" if reuse_id else f"e{offset}", t, shape))
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS, later=STEPS)
async def test_lua_states_decode_to_the_reference_and_go_on_in_python(
    client: aioredis.Redis, steps: list[Any], later: list[Any]
) -> None:
    keys = KeySpace(f"legacy:{uuid.uuid4().hex[:8]}")
    refs: dict[str, reference.LeadState] = {}
    scored = []
    for offset, (lead, event_id, t, shape) in enumerate(timed(steps)):
        decision = decide(shape, RULES)
        ref = refs.setdefault(lead, reference.LeadState(lead))
        reference.apply_event(ref, RULES, event_id, t, decision, DEDUP_MS)
        scored.append(V01Event(lead, event_id, t, offset, decision))
    await apply_v01(client, keys, RULES, scored)

    leads: dict[str, state.LeadState] = {}
    for lead, ref in refs.items():
        raw = await client.get(keys.lead(keys.lead_ref(lead)))
        assert isinstance(raw, bytes)
        stored: dict[str, Any] = msgpack.unpackb(raw, unicode_errors="surrogateescape")
        s = leads[lead] = decode_lead(raw)
        for key in ("P", "c:view", "n:unsub", "dq", "arm", "tier"):
            if key in stored:
                event(f"Lua state with {key}")
        assert decode_lead(encode_lead(s)) == s
        assert (s.lead_id, s.tier, s.armed, s.seq) == (lead, ref.tier, ref.armed, ref.seq)
        now = s.last_ms
        assert now is not None and now == ref.last_ms
        assert s.rules_version == RULES.version
        assert close(state.score_at(s, RULES, now), reference.score_at(ref, RULES, now))
        assert close(s.fit, reference.fit_points(ref)) and s.bant == reference.bant_mask(ref)
        assert state.disqualified(s) == reference.disqualified(ref)
        assert state.due_ms(s, RULES) == reference.due_ms(ref, RULES) == stored.get("due")
        got = state.reasons_at(s, RULES, now)
        expected = reference.reasons_at(ref, RULES, now)
        assert [r for r, _ in got] == [r for r, _ in expected]
        assert all(close(g, e) for (_, g), (_, e) in zip(got, expected, strict=True))

    # The Lua's seen ids are not carried over, so the Python phase runs without dedup (both).
    last = max(t for _, _, t, _ in timed(steps))
    for lead, event_id, t_later, shape in timed(later):
        decision = decide(shape, RULES)
        t = t_later + last - T0  # after the Lua phase; late events reach back into it
        ref = refs.setdefault(lead, reference.LeadState(lead))
        s = leads.setdefault(lead, state.new_lead(lead))
        expected_out = reference.apply_event(ref, RULES, f"py-{event_id}", t, decision, 0)
        out: list[Output] = []
        assert state.apply_event(s, RULES, f"py-{event_id}", t, decision, 0, out)
        assert [(o.kind, o.seq, o.old_tier, o.new_tier, o.cause, o.time_ms) for o in out] == [
            (o.kind, o.seq, o.old_tier, o.new_tier, o.cause, o.time_ms) for o in expected_out or []
        ]
        assert all(close(g.score, e.score) for g, e in zip(out, expected_out or [], strict=True))
    for lead, ref in refs.items():
        s = leads[lead]
        assert s.last_ms is not None and (s.tier, s.armed, s.seq) == (ref.tier, ref.armed, ref.seq)
        assert close(state.score_at(s, RULES, s.last_ms), reference.score_at(ref, RULES, s.last_ms))
