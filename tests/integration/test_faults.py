"""Fault injection on real processes: SIGKILL mid-stream, a Redis outage, SIGTERM, a broker restart.

Each test runs `streamscore worker` subprocesses against the session's real broker and Valkey and
compares what ends up in Redis and on the output topics with the reference model
(streamscore.scoring.reference). The invariant under every fault: each event counts exactly once in
its lead's state, and every output the reference emits appears with its deterministic id, its
copies identical, and no output the reference does not emit appears at all.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamscore import dev
from streamscore.config import Settings
from streamscore.errors import TransientRedisError
from streamscore.runtime.kafka import ensure_topics
from streamscore.scoring.rules import load_rules
from streamscore.store.store import RedisStore
from tests.conftest import RULES_FILE, RedisServer
from tests.integration.faults_support import (
    HOUR_MS,
    QUIET,
    REPLAY_WAIT,
    assert_all_seen,
    assert_states_match,
    check_outputs,
    funnel_reference,
    high_watermarks,
    make_single_topic_traffic,
    make_traffic,
    messages_for,
    outcomes_for,
    progress,
    readiness,
    reference,
    sent,
    slow_redis,
    wait_applied,
    with_retries,
)
from tests.integration.harness import (
    WorkerProcess,
    bounded,
    metric_total,
    produce_positions,
    read_topic,
    wait_for,
)

pytestmark = pytest.mark.slow


@bounded(200)
async def test_sigkill_mid_stream_loses_and_doubles_nothing(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
) -> None:
    rng = random.Random(20240611)
    # The example rules with a 30-minute first-touch SLA, so that some handoffs miss it within
    # the stream's four hours (scoring is the example's, which the reference uses).
    text = RULES_FILE.read_text(encoding="utf-8").replace("    hot: 4h", "    hot: 30m")
    rules_path = tmp_path / "rules-sla.yaml"
    rules_path.write_text(text, encoding="utf-8")
    sla_rules = load_rules(rules_path)
    settings = settings_factory(
        rules_file=rules_path,
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
    ref = reference(stream, settings.dedup_window_s)
    assert ref.duplicates == retried
    # Sales outcomes for half the handoffs, merged with the events by their CRM time.
    outcomes = outcomes_for(rng, ref, 0.5, unique)
    landed += await produce_positions(
        settings, [(settings.topic_outcomes, lead.encode(), raw) for lead, raw in outcomes]
    )
    last = high_watermarks(landed)
    partition_of = {s.lead_id: p for s, (_, p, _) in zip(stream, landed, strict=False)}

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

    # Each outcome joined once, each SLA breach emitted once in effect, through every kill.
    expected = funnel_reference(stream, outcomes, partition_of, settings.dedup_window_s, sla_rules)
    assert {k: v for k, v in (await store.kpi_counters()).items() if v} == expected.counters
    breaches = await read_topic(settings, settings.topic_sla_breaches, timeout_s=5)
    assert {b["breach_id"] for b in breaches} == expected.breaches
    print(f"outcomes: {len(outcomes)} sent, {len(expected.breaches)} SLA breaches")
    assert expected.breaches, "some handoffs should miss their first-touch deadline"


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
