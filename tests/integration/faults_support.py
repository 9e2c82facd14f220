"""Fault-test support: realistic traffic, the reference's view of it, checks on Redis and topics."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from streamscore.config import Settings
from streamscore.events import Limits, parse_event
from streamscore.events.outputs import output_id
from streamscore.events.types import TOPIC_BY_TYPE, EventType
from streamscore.outcomes.events import Outcome, parse_outcome
from streamscore.outcomes.funnel import (
    EMPTY,
    Funnel,
    ScoreSnapshot,
    apply_outcome,
    record_handoff,
)
from streamscore.outcomes.kpi import DEFAULT_MODEL
from streamscore.outcomes.messages import breach_id
from streamscore.scoring.engine import decide
from streamscore.scoring.outputs import Output
from streamscore.scoring.reference import (
    LeadState,
    advance,
    apply_event,
    bant_mask,
    fit_points,
    score_at,
)
from streamscore.scoring.rules import CompiledRules, load_rules
from streamscore.scoring.state import LeadState as LeadStateV
from streamscore.scoring.state import event_id_hash
from streamscore.store.store import RedisStore
from tests.conftest import RULES_FILE
from tests.integration.harness import (
    WorkerProcess,
    event,
    lead_mismatch,
    metric_total,
    read_topic,
    topic_for,
    wait_for,
)

RULES = load_rules(RULES_FILE)
HOUR_MS = 3_600_000
# No inactivity timer during these tests: decay between events is still applied by the event
# path (the same in the reference), and the comparison does not depend on wall-clock ticks.
QUIET = {"decay_tick_s": 3600}
# Exact replay order: hold the merge for any partition that is behind for as long as a fetch
# can take here (the default 200 ms favours live latency; see Aligner and the README).
REPLAY_WAIT = {"align_max_wait_ms": 5000}


# --------------------------------------------------------------------------- traffic


@dataclass(frozen=True)
class Sent:
    """One produced message: its type (for the topic), lead and bytes."""

    type: str
    lead_id: str
    raw: bytes


def sent(etype: str, lead: str, event_id: str, time_ms: int, **extra: Any) -> Sent:
    """A native-envelope event as a Sent."""
    return Sent(etype, lead, event(lead, etype, event_id, time_ms, **extra))


BUYER_TRAITS: list[dict[str, Any]] = [
    {
        "title": "VP Marketing",
        "company_size": 900,
        "budget": 20000,
        "purchase_timeline": "now",
        "industry": "saas",
        "country": "us",
        "email": "vp@acme.com",
    },
    {
        "title": "Chief Revenue Officer",
        "company_size": 5000,
        "budget": 90000,
        "purchase_timeline": "this_quarter",
        "use_case": "routing",
        "industry": "fintech",
    },
    {
        "title": "Head of Growth",
        "employees": 450,
        "revenue": 80_000_000,
        "budget": "15000",
        "purchase_timeline": "0-3 months",
        "country": "de",
    },
    {
        "job_title": "Founder & CEO",
        "company_size": 60,
        "budget": 12000,
        "use_case": "scoring",
        "country": "gb",
    },
]
OTHER_TRAITS: list[dict[str, Any]] = [
    {"title": "Marketing Manager", "company_size": 120, "country": "ca"},
    {"title": "Student", "email": "kid@gmail.com"},
    {"title": "Director of Sales", "company_size": 30, "email": "x@mailinator.com"},
    {"title": "Analyst", "country": "kp", "budget": 50000},
    {
        "title": "VP Sales",
        "email": "spy@rivalscore.io",
        "budget": 30000,
        "purchase_timeline": "now",
    },
    {"industry": "Healthcare", "company_size": 3000, "purchase_timeline": "3-6 months"},
]
BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1)"
BOT_CONTEXT = {"user_agent": BOT_UA}


def _engagement(rng: random.Random, archetype: str) -> tuple[str, dict[str, Any]]:
    """An engagement event type and its extra fields, drawn for a lead of `archetype`."""
    roll = rng.random()
    if archetype == "buyer":
        choices: list[tuple[float, str, dict[str, Any]]] = [
            (
                0.25,
                "page_view",
                {"properties": {"path": rng.choice(["/pricing", "/pricing/team"])}},
            ),
            (0.40, "page_view", {"properties": {"path": rng.choice(["/demo", "/book-a-demo/x"])}}),
            (0.55, "page_view", {"properties": {"path": "/blog/scoring"}}),
            (0.65, "email_click", {}),
            (0.72, "email_open", {}),
            (0.78, "demo_request", {}),
            (0.84, "trial_signup", {}),
            (0.90, "download", {"properties": {"content_type": "whitepaper"}}),
            (0.95, "webinar_signup", {}),
            (0.98, "contact_request", {}),
            (1.00, "unsubscribe", {}),
        ]
    elif archetype == "bot":
        choices = [
            (0.80, "page_view", {"properties": {"path": "/pricing"}, "context": BOT_CONTEXT}),
            (0.95, "page_view", {"properties": {"path": "/docs"}}),
            (1.00, "demo_request", {}),
        ]
    elif archetype == "seeker":
        choices = [
            (0.60, "page_view", {"properties": {"path": "/careers/eng"}}),
            (0.85, "page_view", {"properties": {"path": "/about"}}),
            (1.00, "email_open", {}),
        ]
    else:
        choices = [
            (0.45, "page_view", {"properties": {"path": rng.choice(["/blog/a", "/docs", "/"])}}),
            (0.55, "page_view", {"properties": {"path": "/pricing"}}),
            (0.75, "email_open", {}),
            (0.85, "email_click", {}),
            (0.93, "download", {"properties": {"content_type": rng.choice(["ebook", "case"])}}),
            (0.97, "unsubscribe", {}),
            (1.00, "trial_signup", {}),
        ]
    for bound, etype, extra in choices:
        if roll < bound:
            return etype, extra
    raise AssertionError("unreachable")


def make_traffic(
    rng: random.Random, tag: str, n_leads: int, n_events: int, start_ms: int, end_ms: int
) -> list[Sent]:
    """A realistic mix over `n_leads` leads, in increasing event time, with unique event ids."""
    archetypes = rng.choices(
        ["buyer", "browser", "bot", "seeker"], weights=[25, 55, 8, 12], k=n_leads
    )
    leads = [f"{tag}-lead-{i}" for i in range(n_leads)]
    # A few ids that would be dangerous if used raw in a key.
    for i, odd in enumerate(["{g0}:lead:x", "*", "ünï cødé lead", "a b:{c}"]):
        if i < n_leads:
            leads[i] = f"{odd}-{tag}"
    # Skewed activity: a few leads do most of the clicking, as in real traffic.
    weights = [rng.paretovariate(1.2) * (3 if a == "buyer" else 1) for a in archetypes]
    times = sorted(rng.sample(range(start_ms, end_ms), n_events))
    out: list[Sent] = []
    for i, t in enumerate(times):
        k = rng.choices(range(n_leads), weights=weights)[0]
        lead, archetype = leads[k], archetypes[k]
        if rng.random() < 0.08:
            pool = BUYER_TRAITS if archetype == "buyer" else OTHER_TRAITS
            etype, extra = "identify", {"traits": dict(rng.choice(pool))}
        else:
            etype, extra = _engagement(rng, archetype)
        out.append(sent(etype, lead, f"{tag}-{i:06d}", t, **extra))
    return out


RARE = ["webinar_signup", "contact_request"]
BUYER_PROPERTIES = [
    {"job_title": "VP Marketing", "budget": 20000, "timeline": "now"},
    {"job_title": "Director, Demand Gen", "budget": 15000, "use_case": "routing"},
    {"job_title": "Intern", "budget": 500},
]


def _single_topic_event(rng: random.Random, channel: str) -> tuple[str, dict[str, Any]]:
    """An event for a lead whose events all travel on one topic (`channel`)."""
    props = dict(rng.choice(BUYER_PROPERTIES)) if rng.random() < 0.15 else {}
    if channel == "page_views":
        path = rng.choice(["/pricing", "/pricing/team", "/demo", "/blog/x", "/careers", "/"])
        extra: dict[str, Any] = {"properties": {"path": path, **props}}
        if rng.random() < 0.02:
            extra["context"] = {"user_agent": BOT_UA}
        return "page_view", extra
    if channel == "downloads":
        etype = rng.choice(["download", "download", "trial_signup", "demo_request", *RARE])
        return etype, {"properties": {"content_type": rng.choice(["whitepaper", "case"]), **props}}
    if channel == "email_events":
        return rng.choice(["email_open", "email_click"]), {"properties": props} if props else {}
    if channel == "profiles":
        return "identify", {"traits": dict(rng.choice(BUYER_TRAITS + OTHER_TRAITS))}
    return "unsubscribe", {}


def make_single_topic_traffic(
    rng: random.Random, tag: str, n_leads: int, n_events: int, start_ms: int, end_ms: int
) -> list[Sent]:
    """Traffic where each lead's events use one topic, so one partition orders all of them.

    For events produced while a worker runs, the cross-topic merge order depends on fetch
    timing; with one topic per lead, every lead's own order is fixed and the reference holds.
    """
    channels = rng.choices(
        ["page_views", "downloads", "email_events", "profiles", "unsubscribes"],
        weights=[45, 30, 12, 10, 3],
        k=n_leads,
    )
    leads = [f"{tag}-lead-{i}" for i in range(n_leads)]
    weights = [rng.paretovariate(1.5) for _ in leads]
    times = sorted(rng.sample(range(start_ms, end_ms), n_events))
    out: list[Sent] = []
    for i, t in enumerate(times):
        k = rng.choices(range(n_leads), weights=weights)[0]
        etype, extra = _single_topic_event(rng, channels[k])
        out.append(sent(etype, leads[k], f"{tag}-{i:06d}", t, **extra))
    return out


def with_retries(rng: random.Random, sent: list[Sent], share: float) -> tuple[list[Sent], int]:
    """Re-send a share of the messages later in the stream, as a retrying tracker does."""
    out = list(sent)
    picks = rng.sample(range(len(sent)), int(len(sent) * share))
    for i in sorted(picks, reverse=True):
        out.insert(min(i + 1 + rng.randrange(200), len(out)), sent[i])
    return out, len(picks)


def messages_for(settings: Settings, sent: list[Sent]) -> list[tuple[str, bytes, bytes]]:
    """Kafka (topic, key, value) triples; keyed by lead, as the trackers do."""
    return [(topic_for(settings, s.type), s.lead_id.encode(), s.raw) for s in sent]


def fast_decay_rules(tmp_path: Path) -> Path:
    """The example rules with a one-day half-life: a month-old history has decayed for good."""
    text = RULES_FILE.read_text(encoding="utf-8").replace("half_life: 14d", "half_life: 1d")
    path = tmp_path / "rules-1d.yaml"
    path.write_text(text.replace('version: "b2b-2026.11.1"', 'version: "b2b-1d"'))
    return path


# --------------------------------------------------------------------------- reference


@dataclass
class Reference:
    """What the reference model makes of a stream: lead states and outputs by id."""

    states: dict[str, LeadState] = field(default_factory=dict)
    outputs: dict[str, Output] = field(default_factory=dict)
    duplicates: int = 0


def reference(
    sent: list[Sent],
    dedup_window_s: int,
    rules: CompiledRules = RULES,
    advance_to_ms: int | None = None,
) -> Reference:
    """Apply `sent` in the worker's replay order: by (event time, event id).

    With `advance_to_ms`, every lead's inactivity drops up to then are applied afterwards, as
    the decay tick does once the worker has caught up.
    """
    now = int(time.time() * 1000)
    parsed = [parse_event(s.raw, TOPIC_BY_TYPE[EventType(s.type)], now, Limits()) for s in sent]
    ref = Reference()
    for ev in sorted(parsed, key=lambda e: (e.time_ms, e.event_id)):
        state = ref.states.setdefault(ev.lead_id, LeadState(ev.lead_id))
        outs = apply_event(
            state, rules, ev.event_id, ev.time_ms, decide(ev, rules), dedup_window_s * 1000
        )
        if outs is None:
            ref.duplicates += 1
            continue
        for out in outs:
            ref.outputs[output_id(out.lead_id, out.seq)] = out
    if advance_to_ms is not None:
        for state in ref.states.values():
            for out in advance(state, rules, advance_to_ms):
                ref.outputs[output_id(out.lead_id, out.seq)] = out
    return ref


async def assert_states_match(
    store: RedisStore, ref: Reference, leads: set[str], rules: CompiledRules = RULES
) -> None:
    """Every lead in Redis holds the reference's present, tier, sequence, arming and score."""
    mismatched = [
        m for lead in sorted(leads) if (m := await lead_mismatch(store, ref.states[lead], rules))
    ]
    assert not mismatched, f"{len(mismatched)} of {len(leads)} leads differ:\n" + "\n".join(
        mismatched[:20]
    )


async def assert_all_seen(store: RedisStore, sent: list[Sent]) -> None:
    """Every event id is among its lead's seen ids: no event was skipped on the way to Redis."""
    missing = []
    states: dict[str, LeadStateV | None] = {}
    for s in sent:
        if s.lead_id not in states:
            states[s.lead_id] = await store.lead_state(s.lead_id)
        got = states[s.lead_id]
        event_id = orjson.loads(s.raw)["event_id"]
        if got is None or got.seen is None or event_id_hash(event_id) not in got.seen:
            missing.append((s.lead_id, event_id))
    assert not missing, f"{len(missing)} events never reached Redis: {missing[:10]}"


async def check_outputs(settings: Settings, ref: Reference, leads: set[str]) -> dict[str, int]:
    """Compare the handoff and tier-change topics with the reference; return copies per kind.

    Duplicates by id are allowed (a crash between send and outbox ack re-sends them), but the
    copies must be the same message, and no id may be missing or unexpected.
    """
    extra_copies: dict[str, int] = {}
    for kind, topic, id_field in (
        ("handoff", settings.topic_handoffs, "handoff_id"),
        ("tier_change", settings.topic_tier_changes, "change_id"),
    ):
        found = await asyncio.wait_for(read_topic(settings, topic, timeout_s=20), 60)
        by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for msg in found:
            if msg["lead_id"] in leads:
                by_id[msg[id_field]].append(msg)
        want = {
            oid: out
            for oid, out in ref.outputs.items()
            if out.kind == kind and out.lead_id in leads
        }
        missing = sorted((want[i].lead_id, want[i].seq) for i in set(want) - set(by_id))
        unexpected = sorted({m[0]["lead_id"] for i, m in by_id.items() if i not in want})
        assert not missing, f"{kind}: {len(missing)} reference outputs never sent: {missing[:10]}"
        assert not unexpected, f"{kind}: ids the reference never emitted, for {unexpected[:10]}"
        for oid, copies in by_id.items():
            assert all(c == copies[0] for c in copies), f"{kind} {oid} copies differ: {copies}"
            msg, out = copies[0], want[oid]
            assert (msg["lead_id"], msg["old_tier"], msg["new_tier"]) == (
                out.lead_id,
                out.old_tier,
                out.new_tier,
            ), (msg, out)
            assert msg["triggering_event_id"] == out.event_id, (msg, out)
            assert math.isclose(msg["score"], out.score, abs_tol=1e-5), (msg, out)
        extra_copies[kind] = sum(len(c) - 1 for c in by_id.values())
    return extra_copies


# --------------------------------------------------------------------------- fixtures


def high_watermarks(landed: list[tuple[str, int, int]]) -> dict[str, int]:
    """Last offset per "topic:partition", the form RedisStore.applied_offsets() uses."""
    last: dict[str, int] = {}
    for topic, partition, offset in landed:
        key = f"{topic}:{partition}"
        last[key] = max(last.get(key, -1), offset)
    return last


async def wait_applied(
    store: RedisStore, last: dict[str, int], worker: WorkerProcess, timeout_s: float
) -> None:
    """Wait until Redis records every produced offset as applied, and the outbox is drained."""

    async def done() -> bool:
        applied = await store.applied_offsets()
        return all(applied.get(tp, -1) >= off for tp, off in last.items())

    assert await wait_for(done, timeout_s), (
        f"not all offsets applied: {await store.applied_offsets()} vs {last}\n{worker.log()}"
    )

    async def drained() -> bool:
        return await store.outbox_length() == 0

    assert await wait_for(drained, 30), f"outbox not drained\n{worker.log()}"


def progress(applied: dict[str, int], last: dict[str, int]) -> int:
    """Messages at or below the applied offsets, over the produced partitions."""
    return sum(min(applied.get(tp, -1), off) + 1 for tp, off in last.items())


async def slow_redis(redis_url: str, paused_ms: int = 200, period_ms: int = 250) -> None:
    """Hold every client's writes (scripts included) for paused_ms of each period_ms, until
    cancelled: a real server that is slow, not a mock."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=15)
    try:
        while True:
            await client.execute_command(  # type: ignore[no-untyped-call]  # redis-py: untyped
                "CLIENT", "PAUSE", paused_ms, "WRITE"
            )
            await asyncio.sleep(period_ms / 1000)
    finally:
        await client.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
        await client.aclose()


# --------------------------------------------------------------------------- tests


def readiness(worker: WorkerProcess) -> tuple[int, float]:
    """/readyz status and the streamscore_ready gauge, read from the worker's HTTP port."""
    status, _ = worker.get("/readyz")
    _, body = worker.get("/metrics")
    return status, metric_total(body.decode(), "streamscore_ready")


# --------------------------------------------------------------------------- sales outcomes


@dataclass
class FunnelReference:
    """What the outcomes loop must commit for a stream: KPI counters and SLA breach ids."""

    counters: dict[str, int] = field(default_factory=dict)
    breaches: set[str] = field(default_factory=set)


def outcomes_for(
    rng: random.Random, ref: Reference, share: float, tag: str
) -> list[tuple[str, bytes]]:
    """(lead id, message) of CRM outcomes for a share of the reference's handoffs.

    Touches land before or after the SLA deadline, some arrive twice (a connector retry),
    opportunities and deals follow for some; no rejection (recycling changes scoring, which the
    scoring reference does not model).
    """
    out: list[tuple[str, bytes]] = []
    handoffs = sorted(
        (o for o in ref.outputs.values() if o.kind == "handoff"), key=lambda o: (o.time_ms, o.seq)
    )
    for n, h in enumerate(rng.sample(handoffs, int(len(handoffs) * share))):
        base = f"{tag}-o{n}"
        touch = h.time_ms + rng.randint(-20, 90) * 60_000
        steps: list[tuple[str, int, dict[str, Any]]] = [
            ("first_touch", touch, {"channel": rng.choice(["call", "email", "meeting"])})
        ]
        if rng.random() < 0.5:
            steps.append(("opportunity_created", touch + 3_600_000, {"amount": 20000}))
            if rng.random() < 0.6:
                kind = rng.choice(["won", "lost"])
                steps.append((kind, touch + 7_200_000, {"reason": "price"}))
        latest = int(time.time() * 1000) - 60_000  # CRM times are in the past
        for i, (kind, t, extra) in enumerate((k, min(t, latest), x) for k, t, x in steps):
            doc: dict[str, Any] = {
                "outcome_id": f"{base}-{i}",
                "lead_id": h.lead_id,
                "type": kind,
                "time": t,
            }
            raw = orjson.dumps({**doc, **extra})
            out.append((h.lead_id, raw))
            if rng.random() < 0.1:
                out.append((h.lead_id, raw))
    return out


def funnel_reference(
    sent: list[Sent],
    outcomes: list[tuple[str, bytes]],
    partition_of: dict[str, int],
    dedup_window_s: int,
    rules: CompiledRules = RULES,
) -> FunnelReference:
    """The outcomes loop over the same records, as the worker applies them without ticks.

    Records go through in the worker's merge order, (time, id); each partition's clock is the
    latest record time applied in it, which is when a funnel notices a passed deadline.
    """
    now = int(time.time() * 1000)
    records: list[tuple[int, str, Any]] = []
    for s in sent:
        ev = parse_event(s.raw, TOPIC_BY_TYPE[EventType(s.type)], now, Limits())
        records.append((ev.time_ms, ev.event_id, ev))
    for _, raw in outcomes:
        o = parse_outcome(raw, now, Limits())
        records.append((o.time_ms, o.outcome_id, o))
    states: dict[str, LeadState] = {}
    funnels: dict[str, Funnel] = {}
    clocks: dict[int, int] = {}
    result = FunnelReference()

    def add(deltas: dict[str, int], effects: Any) -> None:
        for name, n in deltas.items():
            result.counters[name] = result.counters.get(name, 0) + n
        result.breaches |= {breach_id(e.handoff_id) for e in effects if hasattr(e, "deadline_ms")}

    for time_ms, _, record in sorted(records, key=lambda r: (r[0], r[1])):
        lead = record.lead_id
        part = partition_of[lead]
        clock = clocks[part] = max(clocks.get(part, 0), time_ms)
        state = states.setdefault(lead, LeadState(lead))
        funnel = funnels.get(lead, EMPTY)
        if isinstance(record, Outcome):
            snapshot = None
            if state.last_ms is not None:
                snapshot = ScoreSnapshot(
                    score_at(state, rules, state.last_ms), rules.tiers[state.tier].name,
                    rules.grade_of(fit_points(state)), bant_mask(state), rules.version,
                    DEFAULT_MODEL,
                )  # fmt: skip
            funnel, deltas, effects = apply_outcome(funnel, record, snapshot, rules.outcomes, clock)
            add(deltas, effects)
        else:
            outs = apply_event(
                state, rules, record.event_id, record.time_ms, decide(record, rules),
                dedup_window_s * 1000,
            ) or []  # fmt: skip
            for out in outs:
                if out.kind != "handoff":
                    continue
                snapshot = ScoreSnapshot(
                    out.score, out.new_tier, out.grade, out.bant_mask, rules.version,
                    DEFAULT_MODEL, output_id(out.lead_id, out.seq), out.time_ms,
                )  # fmt: skip
                funnel, deltas, effects = record_handoff(
                    funnel, snapshot, rules.outcomes, max(clock, out.time_ms)
                )
                add(deltas, effects)
        funnels[lead] = funnel
    result.counters = {k: v for k, v in result.counters.items() if v}
    return result
