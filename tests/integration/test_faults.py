"""Fault injection on real processes: SIGKILL mid-stream, a Redis outage, SIGTERM, a broker restart.

Each test runs `streamscore worker` subprocesses against the session's real broker and Valkey and
compares what ends up in Redis and on the output topics with the reference model
(streamscore.scoring.reference). The invariant under every fault: each event counts exactly once in
its lead's state, and every output the reference emits appears with its deterministic id, its
copies identical, and no output the reference does not emit appears at all.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from streamscore import dev
from streamscore.config import Settings
from streamscore.errors import TransientRedisError
from streamscore.events import Limits, parse_event
from streamscore.events.outputs import output_id
from streamscore.events.types import TOPIC_BY_TYPE, EventType
from streamscore.runtime.kafka import ensure_topics
from streamscore.scoring.engine import decide
from streamscore.scoring.outputs import Output
from streamscore.scoring.reference import LeadState, apply_event
from streamscore.scoring.rules import load_rules
from streamscore.scoring.state import LeadState as LeadStateV
from streamscore.scoring.state import event_id_hash
from streamscore.store.store import RedisStore
from tests.conftest import RULES_FILE, RedisServer
from tests.integration.harness import (
    WorkerProcess,
    bounded,
    event,
    lead_mismatch,
    metric_total,
    open_test_store,
    produce_positions,
    read_topic,
    topic_for,
    wait_for,
)

pytestmark = pytest.mark.slow

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


# --------------------------------------------------------------------------- reference


@dataclass
class Reference:
    """What the reference model makes of a stream: lead states and outputs by id."""

    states: dict[str, LeadState] = field(default_factory=dict)
    outputs: dict[str, Output] = field(default_factory=dict)
    duplicates: int = 0


def reference(sent: list[Sent], dedup_window_s: int) -> Reference:
    """Apply `sent` in the worker's replay order: by (event time, event id)."""
    now = int(time.time() * 1000)
    parsed = [parse_event(s.raw, TOPIC_BY_TYPE[EventType(s.type)], now, Limits()) for s in sent]
    ref = Reference()
    for ev in sorted(parsed, key=lambda e: (e.time_ms, e.event_id)):
        state = ref.states.setdefault(ev.lead_id, LeadState(ev.lead_id))
        outs = apply_event(
            state, RULES, ev.event_id, ev.time_ms, decide(ev, RULES), dedup_window_s * 1000
        )
        if outs is None:
            ref.duplicates += 1
            continue
        for out in outs:
            ref.outputs[output_id(out.lead_id, out.seq)] = out
    return ref


async def assert_states_match(store: RedisStore, ref: Reference, leads: set[str]) -> None:
    """Every lead in Redis holds the reference's present, tier, sequence, arming and score."""
    mismatched = [
        m for lead in sorted(leads) if (m := await lead_mismatch(store, ref.states[lead], RULES))
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


@pytest.fixture
async def store(settings_factory: Callable[..., Settings]) -> AsyncIterator[RedisStore]:
    store = await open_test_store(settings_factory())
    yield store
    await store.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Workers a test starts; any still running at the end are SIGKILLed by PID."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


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


@bounded(200)
async def test_sigkill_mid_stream_loses_and_doubles_nothing(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
) -> None:
    rng = random.Random(20240611)
    settings = settings_factory(
        batch_max_events=200,
        kafka_session_timeout_ms=3000,
        # Small, so that fetching pauses and resumes all the way: the exact merge, and so
        # the reference's outputs, must survive it.
        align_max_buffered=2,
        **QUIET,
        **REPLAY_WAIT,
    )
    now = int(time.time() * 1000)
    sent = make_traffic(rng, unique, 200, 4000, now - 4 * HOUR_MS, now - 60_000)
    stream, retried = with_retries(rng, sent, 0.03)
    landed = await produce_positions(settings, messages_for(settings, stream))
    last = high_watermarks(landed)
    ref = reference(stream, settings.dedup_window_s)
    assert ref.duplicates == retried

    # Each kill waits for the stream to pass a random point, not for a while: a timed kill
    # lands after the end on a fast enough machine. Polled every few ms, a kill overshoots its
    # point by a batch or two, wherever the worker is in its apply, emit and commit cycle.
    targets = sorted(rng.sample(range(len(stream) // 10, len(stream) * 3 // 4), rng.randint(3, 5)))
    kills = []
    for n, target in enumerate(targets):
        worker = WorkerProcess(settings, tmp_path, name=f"crash{n}")
        workers.append(worker)

        # Not behind wait_ready: its 250 ms poll lets a fast worker finish the stream first.
        async def passed(worker: WorkerProcess = worker, target: int = target) -> bool:
            assert worker.proc.poll() is None, f"worker exited early:\n{worker.log()}"
            return progress(await store.applied_offsets(), last) >= target

        assert await wait_for(passed, 60, interval_s=0.005), worker.log()
        worker.kill()
        kills.append(progress(await store.applied_offsets(), last))
    print(f"progress at each SIGKILL: {kills} of {len(stream)} messages")
    # The kills must land mid-stream, or this would test nothing.
    assert any(0 < k < len(stream) for k in kills), kills

    final = WorkerProcess(settings, tmp_path, name="final")
    workers.append(final)
    await final.wait_ready()
    await wait_applied(store, last, final, timeout_s=90)
    _, body = final.get("/metrics")
    assert metric_total(body.decode(), "streamscore_fetch_pauses_total") > 0
    assert final.terminate() == 0, final.log()

    leads = {s.lead_id for s in stream}
    assert set(ref.states) == leads
    await assert_all_seen(store, stream)
    await assert_states_match(store, ref, leads)
    copies = await check_outputs(settings, ref, leads)
    handoffs = sum(1 for o in ref.outputs.values() if o.kind == "handoff")
    changes = len(ref.outputs) - handoffs
    print(f"reference: {handoffs} handoffs, {changes} tier changes; re-sent copies: {copies}")
    assert handoffs >= 10, "the traffic should hand off a fair number of leads"


def readiness(worker: WorkerProcess) -> tuple[int, float]:
    """/readyz status and the streamscore_ready gauge, read from the worker's HTTP port."""
    status, _ = worker.get("/readyz")
    _, body = worker.get("/metrics")
    return status, metric_total(body.decode(), "streamscore_ready")


@bounded(200)
async def test_redis_outage_blocks_then_resumes_without_loss(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
    redis_server: RedisServer,
) -> None:
    if not redis_server.embedded:
        pytest.fail("the outage test stops and restarts Redis: it needs the embedded Valkey")
    rng = random.Random(7)
    settings = settings_factory(**QUIET)  # default redis_retry_max_s (120 s) rides out 12 s
    now = int(time.time() * 1000)
    phases = [
        make_single_topic_traffic(
            rng, f"{unique}p{i}", 40, 300, now - (4 - i) * HOUR_MS, now - (3 - i) * HOUR_MS
        )
        for i in (1, 2, 3)
    ]
    # A tracker retrying across the outage: phase-2 messages sent again in phase 3.
    resent = rng.sample(phases[1], 15)
    phases[2] = phases[2] + resent
    worker = WorkerProcess(settings, tmp_path, name="outage")
    workers.append(worker)
    await worker.wait_ready()

    landed = await produce_positions(settings, messages_for(settings, phases[0]))
    await wait_applied(store, high_watermarks(landed), worker, timeout_s=60)
    assert readiness(worker) == (200, 1.0)

    redis_server.stop()
    down_at = time.monotonic()
    try:
        landed = await produce_positions(settings, messages_for(settings, phases[1]))

        async def unready() -> bool:
            return await asyncio.to_thread(readiness, worker) == (503, 0.0)

        assert await wait_for(unready, 10), f"still ready with Redis down\n{worker.log()}"
        while time.monotonic() - down_at < 12:
            assert worker.proc.poll() is None, f"worker exited during the outage\n{worker.log()}"
            await asyncio.sleep(0.5)
        assert await asyncio.to_thread(readiness, worker) == (503, 0.0)
    finally:
        # The embedded Valkey is memory-only: it comes back EMPTY on the same port.
        redis_server.start()

    async def answers() -> bool:
        try:
            return await store.ping()  # the test's own connections went with the old server
        except TransientRedisError:
            return False

    assert await wait_for(answers, 10)

    async def ready() -> bool:
        return await asyncio.to_thread(readiness, worker) == (200, 1.0)

    assert await wait_for(ready, 15), f"not ready after Redis came back\n{worker.log()}"
    landed += await produce_positions(settings, messages_for(settings, phases[2]))
    await wait_applied(store, high_watermarks(landed), worker, timeout_s=60)

    # Phase-1 state went with the memory-only server (a real Redis with persistence would keep
    # it); this shows the restart really wiped it, so what follows was applied afterwards.
    assert await store.lead_state(phases[0][0].lead_id) is None
    after = phases[1] + phases[2]
    ref = reference(after, settings.dedup_window_s)
    assert ref.duplicates == len(resent)
    leads = {s.lead_id for s in after}
    await assert_all_seen(store, after)
    await assert_states_match(store, ref, leads)  # nothing lost, nothing counted twice
    copies = await check_outputs(settings, ref, leads)
    _, body = worker.get("/metrics")
    text = body.decode()
    assert metric_total(text, "streamscore_retries_total", operation="redis") > 0
    assert metric_total(text, "streamscore_events_total", outcome="duplicate") == len(resent)
    assert worker.proc.poll() is None, worker.log()
    handoffs = sum(1 for o in ref.outputs.values() if o.kind == "handoff")
    print(f"outage: {len(ref.outputs)} outputs ({handoffs} handoffs) for phases 2 and 3, "
          f"re-sent copies by id: {copies}")  # fmt: skip
    assert handoffs >= 3, "the traffic should hand off some leads during and after the outage"
    assert worker.terminate() == 0, worker.log()


@bounded(200)
async def test_sigterm_mid_stream_exits_cleanly_and_the_next_worker_resumes(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
    redis_url: str,
) -> None:
    rng = random.Random(99)
    settings = settings_factory(batch_max_events=200, **QUIET, **REPLAY_WAIT)
    now = int(time.time() * 1000)
    stream = make_traffic(rng, unique, 120, 3000, now - 3 * HOUR_MS, now - 60_000)
    landed = await produce_positions(settings, messages_for(settings, stream))
    last = high_watermarks(landed)
    ref = reference(stream, settings.dedup_window_s)

    first = WorkerProcess(settings, tmp_path, name="first")
    workers.append(first)
    throttle = asyncio.create_task(slow_redis(redis_url))
    try:
        # Not behind wait_ready: its 250 ms poll lets a fast worker get too far.
        async def under_way() -> bool:
            return progress(await store.applied_offsets(), last) >= 200

        assert await wait_for(under_way, 60, interval_s=0.01), first.log()
        before = progress(await store.applied_offsets(), last)
        started = time.monotonic()
        # In a thread, so the throttle keeps going while the worker winds down.
        code = await asyncio.to_thread(first.terminate, 10)  # AssertionError if it overruns
        stopped_s = time.monotonic() - started
    finally:
        throttle.cancel()
        await asyncio.gather(throttle, return_exceptions=True)
    assert code == 0, first.log()
    applied = progress(await store.applied_offsets(), last)
    print(f"SIGTERM at {before}, stopped at {applied} of {len(stream)}, in {stopped_s:.2f} s")
    assert applied < len(stream), "the stream should still have been under way"
    # The intake stops at the signal: what lands after it is the batches in flight (applying,
    # queued, being prepared) and what slipped through before the signal was handled.
    assert applied - before <= 5 * settings.batch_max_events, (before, applied)
    # The batch in flight was finished: its outputs were sent and acknowledged.
    assert await store.outbox_length() == 0

    second = WorkerProcess(settings, tmp_path, name="second")
    workers.append(second)
    await second.wait_ready()
    await wait_applied(store, last, second, timeout_s=60)
    _, body = second.get("/metrics")
    text = body.decode()
    # The first worker committed exactly what it had applied: nothing is read twice, nothing
    # is skipped.
    assert metric_total(text, "streamscore_events_total", outcome="duplicate") == 0
    assert metric_total(text, "streamscore_events_total", outcome="scored") == len(stream) - applied
    assert second.terminate() == 0, second.log()

    leads = {s.lead_id for s in stream}
    await assert_all_seen(store, stream)
    await assert_states_match(store, ref, leads)
    await check_outputs(settings, ref, leads)


@dataclass
class BrokerRestart:
    """A worker on a private broker that was restarted empty (memory-only) under it."""

    settings: Settings
    worker: WorkerProcess
    before: list[tuple[str, int, int]]  # where the events before the restart had landed


async def restart_broker_under_worker(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    brokers: list[dev.EmbeddedServer],
    unique: str,
) -> BrokerRestart:
    """Score a few events on a private broker, then replace it by an empty one on its port."""
    broker = dev.start_broker()  # our own: the session's broker is shared, never killed
    brokers.append(broker)
    settings = settings_factory(kafka_bootstrap=broker.bootstrap, **QUIET)
    worker = WorkerProcess(settings, tmp_path, name="broker")
    workers.append(worker)
    await worker.wait_ready()
    now = int(time.time() * 1000)
    pricing = {"properties": {"path": "/pricing"}}
    before = [
        sent("page_view", "bk-a", f"{unique}-a{i}", now - 60_000 + i, **pricing) for i in range(3)
    ]
    landed = await produce_positions(settings, messages_for(settings, before))
    await wait_applied(store, high_watermarks(landed), worker, timeout_s=30)

    broker.stop()
    brokers.append(dev.start_broker(port=broker.port))
    # The topics are gone with the old broker. The worker must ride that out, not exit.
    for _ in range(6):
        await asyncio.sleep(0.5)
        assert worker.proc.poll() is None, f"worker exited after the broker restart\n{worker.log()}"
        assert worker.get("/healthz")[0] == 200
    # Operators (or the worker's next start) recreate the topics.
    await ensure_topics(settings)
    return BrokerRestart(settings, worker, landed)


@pytest.fixture
def brokers() -> Iterator[list[dev.EmbeddedServer]]:
    """Private brokers a test starts; stopped by PID at the end."""
    started: list[dev.EmbeddedServer] = []
    yield started
    for broker in started:
        broker.stop()


@bounded(200)
async def test_broker_restart_worker_reconnects_and_scores_new_events(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    brokers: list[dev.EmbeddedServer],
    unique: str,
) -> None:
    run = await restart_broker_under_worker(
        settings_factory, store, workers, tmp_path, brokers, unique
    )
    settings, worker = run.settings, run.worker
    now = int(time.time() * 1000)
    # A new lead on a topic that carried nothing before: its offsets start fresh everywhere.
    after = [
        sent(t, "bk-b", f"{unique}-b{i}", now - 30_000 + i)
        for i, t in enumerate(["trial_signup", "demo_request", "download"])
    ]
    landed = await produce_positions(settings, messages_for(settings, after))
    await wait_applied(store, high_watermarks(landed), worker, timeout_s=60)
    ref = reference(after, settings.dedup_window_s)
    await assert_states_match(store, ref, {"bk-b"})
    assert [o.new_tier for o in ref.outputs.values()] == ["warm"]
    await check_outputs(settings, ref, {"bk-b"})  # the output path works on the new broker too

    async def ready() -> bool:
        return await asyncio.to_thread(readiness, worker) == (200, 1.0)

    assert await wait_for(ready, 15), worker.log()
    assert worker.terminate() == 0, worker.log()


class EventsSkipped(AssertionError):
    """Events on the broker never reached Redis (what the test below guards against)."""


@bounded(200)
async def test_broker_restart_events_on_recreated_partitions_are_not_skipped(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    brokers: list[dev.EmbeddedServer],
    unique: str,
) -> None:
    """Events written to a topic that was recreated under a running worker must be scored.

    Left alone they would be lost: the consumer keeps its in-memory fetch position (3 here)
    and would commit it to the new, empty group, so offsets 0..2 of the new topic would never
    be fetched; had they been, apply_batch.lua would still drop them as at or below the
    recorded offset 2 for that topic-partition. The worker sees its position beyond the high
    watermark, forgets the partition's applied offsets and reads it from the beginning. A
    real Kafka keeps its data across restarts, but a topic deleted and recreated (or restored
    from an older snapshot) hits the same path.
    """
    run = await restart_broker_under_worker(
        settings_factory, store, workers, tmp_path, brokers, unique
    )
    settings, worker = run.settings, run.worker
    now = int(time.time() * 1000)
    # The same lead again, so the same partition of the (recreated) page-views topic, whose
    # offsets restart at 0: below what the worker had consumed and recorded before.
    demo = {"properties": {"path": "/demo"}}
    after = [
        sent("page_view", "bk-a", f"{unique}-c{i}", now - 30_000 + i, **demo) for i in range(3)
    ]
    landed = await produce_positions(settings, messages_for(settings, after))
    assert [off for _, _, off in landed] == [off for _, _, off in run.before]  # reused offsets

    async def demo_points() -> bool:
        got = await store.lead_state("bk-a")
        return got is not None and "demo_page" in got.points

    scored = await wait_for(demo_points, 10)
    assert worker.terminate() == 0, worker.log()
    if not scored:
        raise EventsSkipped(f"page views on the recreated partition were never scored: {landed}")
