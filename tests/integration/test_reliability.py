"""Faults a production Redis or Kafka produces sooner or later: OOM, failover, an outage past the
retry budget, a dead letter the broker refuses, groups of workers with decay ticks, kills.

Each compares what ends up in Redis and on the output topics with the reference model, and
checks that no offset is committed past an event whose effect is not safe.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from streamscore.config import Settings
from streamscore.dev import free_port, start_valkey
from streamscore.events.outputs import output_id
from streamscore.metrics import create_metrics
from streamscore.runtime.kafka import ensure_topics
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.sensors import PrometheusSensor
from streamscore.runtime.worker import ScoringWorker
from streamscore.scoring.rules import load_rules
from streamscore.store.outbox import decode_entry
from streamscore.store.store import RedisStore
from tests.conftest import RULES_FILE
from tests.integration.conftest import ClusterUnderTest
from tests.integration.faults_support import (
    HOUR_MS,
    QUIET,
    assert_all_seen,
    assert_states_match,
    check_outputs,
    fast_decay_rules,
    high_watermarks,
    make_single_topic_traffic,
    make_traffic,
    messages_for,
    progress,
    readiness,
    reference,
    wait_applied,
)
from tests.integration.harness import (
    WorkerProcess,
    bounded,
    event,
    metric_total,
    open_test_store,
    produce_positions,
    read_topic,
    wait_for,
)

pytestmark = pytest.mark.slow


async def committed_offsets(settings: Settings) -> dict[str, int]:
    """The consumer group's committed offsets, as "topic:partition" -> next offset to read.

    Read with OffsetFetch by a consumer of the group that never subscribes, so it does not
    join the group and cause a rebalance (Tansu does not answer the admin client's call).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        out = {}
        for topic in settings.input_topics:
            for partition in consumer.partitions_for_topic(topic) or ():
                offset = await consumer.committed(TopicPartition(topic, partition))
                if offset is not None:
                    out[f"{topic}:{partition}"] = offset
        return out
    finally:
        await consumer.stop()


async def assert_commits_within_applied(settings: Settings, store: RedisStore) -> None:
    """No committed offset passes an event that Redis has not applied (or dead-lettered)."""
    applied = await store.applied_offsets()
    committed = await committed_offsets(settings)
    ahead = {
        tp: (offset, applied.get(tp, -1))
        for tp, offset in committed.items()
        if offset > applied.get(tp, -1) + 1
    }
    assert not ahead, f"committed past what Redis applied (committed, applied): {ahead}"


def log_has(worker: WorkerProcess, pattern: str) -> bool:
    return re.search(pattern, worker.log_path.read_text(errors="replace")) is not None


async def used_memory(client: aioredis.Redis) -> int:
    info: dict[str, Any] = await client.info("memory")
    return int(info["used_memory"])


@bounded(240)
async def test_out_of_memory_holds_the_batch_then_resumes_without_loss(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
    redis_url: str,
) -> None:
    rng = random.Random(404)
    # A 2 s retry budget: back-pressure must not spend it (the worker must not exit).
    settings = settings_factory(
        batch_max_events=200, redis_retry_max_s=2, watchdog_stall_s=2, **QUIET
    )
    now = int(time.time() * 1000)
    # Produced while a worker runs: one topic per lead, so each lead's order is fixed (the
    # cross-topic order of live appends is a race, see make_single_topic_traffic).
    first = make_single_topic_traffic(
        rng, f"{unique}a", 60, 600, now - 3 * HOUR_MS, now - 2 * HOUR_MS
    )
    second = make_single_topic_traffic(rng, f"{unique}b", 60, 900, now - 2 * HOUR_MS, now - HOUR_MS)
    worker = WorkerProcess(settings, tmp_path, name="oom")
    workers.append(worker)
    await worker.wait_ready()
    landed = await produce_positions(settings, messages_for(settings, first))
    await wait_applied(store, high_watermarks(landed), worker, timeout_s=60)

    admin = aioredis.Redis.from_url(redis_url)
    try:
        await admin.config_set("maxmemory", max(await used_memory(admin) - 200_000, 1))
        landed += await produce_positions(settings, messages_for(settings, second))

        async def backpressure() -> bool:
            _, body = await asyncio.to_thread(worker.get, "/metrics")
            text = body.decode()
            return metric_total(text, "streamscore_redis_failing", failure="backpressure") == 1

        assert await wait_for(backpressure, 30), worker.log()
        assert (await asyncio.to_thread(readiness, worker)) == (503, 0.0)
        before = progress(await store.applied_offsets(), high_watermarks(landed))
        await asyncio.sleep(6)  # three times the retry budget
        assert worker.proc.poll() is None, f"back-pressure ended the worker:\n{worker.log()}"
        assert progress(await store.applied_offsets(), high_watermarks(landed)) == before
        assert log_has(worker, r"failing \(backpressure\)"), worker.log()

        # The watchdog looks every 5 s (app.WATCHDOG_EVERY_S): allow it two looks.
        async def watchdog_spoke() -> bool:
            return log_has(worker, r"no progress for \d+ s")

        assert await wait_for(watchdog_spoke, 12), (
            "the watchdog said nothing\n" + worker.log()[-3000:]
        )
        await assert_commits_within_applied(settings, store)
        # SIGTERM while Redis refuses: a clean exit that commits nothing it did not apply.
        assert worker.terminate() == 0, worker.log()
        await assert_commits_within_applied(settings, store)
    finally:
        await admin.config_set("maxmemory", 0)
        await admin.aclose()

    final = WorkerProcess(settings, tmp_path, name="after-oom")
    workers.append(final)
    await final.wait_ready()
    await wait_applied(store, high_watermarks(landed), final, timeout_s=90)
    assert final.terminate() == 0, final.log()
    everything = first + second
    ref = reference(everything, settings.dedup_window_s)
    leads = {s.lead_id for s in everything}
    await assert_all_seen(store, everything)
    await assert_states_match(store, ref, leads)
    await check_outputs(settings, ref, leads)


@bounded(200)
async def test_a_failover_to_a_read_only_replica_is_ridden_out(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
    redis_url: str,
) -> None:
    rng = random.Random(606)
    settings = settings_factory(batch_max_events=200, **QUIET)
    now = int(time.time() * 1000)
    first = make_single_topic_traffic(
        rng, f"{unique}a", 50, 500, now - 3 * HOUR_MS, now - 2 * HOUR_MS
    )
    second = make_single_topic_traffic(rng, f"{unique}b", 50, 700, now - 2 * HOUR_MS, now - HOUR_MS)
    worker = WorkerProcess(settings, tmp_path, name="readonly")
    workers.append(worker)
    await worker.wait_ready()
    landed = await produce_positions(settings, messages_for(settings, first))
    await wait_applied(store, high_watermarks(landed), worker, timeout_s=60)

    admin = aioredis.Redis.from_url(redis_url)
    try:
        # A replica of a primary that does not answer keeps its data and refuses writes with
        # READONLY, as a demoted primary does during a failover.
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "REPLICAOF", "127.0.0.1", str(free_port())
        )
        landed += await produce_positions(settings, messages_for(settings, second))

        async def unready() -> bool:
            return await asyncio.to_thread(readiness, worker) == (503, 0.0)

        assert await wait_for(unready, 20), worker.log()
        await asyncio.sleep(3)
        assert worker.proc.poll() is None, worker.log()
    finally:
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "REPLICAOF", "NO", "ONE"
        )
        await admin.aclose()
    await wait_applied(store, high_watermarks(landed), worker, timeout_s=90)
    assert log_has(worker, r"failing \(transient\).*READONLY|ReadOnlyError"), worker.log()
    assert worker.terminate() == 0, worker.log()
    everything = first + second
    ref = reference(everything, settings.dedup_window_s)
    leads = {s.lead_id for s in everything}
    await assert_states_match(store, ref, leads)
    await check_outputs(settings, ref, leads)


@bounded(200)
async def test_an_outage_past_the_retry_budget_ends_the_worker_promptly(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
    redis_url: str,
) -> None:
    rng = random.Random(808)
    settings = settings_factory(
        batch_max_events=200, redis_retry_max_s=2, redis_timeout_s=1, **QUIET
    )
    now = int(time.time() * 1000)
    first = make_single_topic_traffic(
        rng, f"{unique}a", 50, 500, now - 3 * HOUR_MS, now - 2 * HOUR_MS
    )
    second = make_single_topic_traffic(rng, f"{unique}b", 50, 700, now - 2 * HOUR_MS, now - HOUR_MS)
    worker = WorkerProcess(settings, tmp_path, name="budget")
    workers.append(worker)
    await worker.wait_ready()
    landed = await produce_positions(settings, messages_for(settings, first))
    await wait_applied(store, high_watermarks(landed), worker, timeout_s=60)

    admin = aioredis.Redis.from_url(redis_url)
    try:
        # Writes hang (not refused) for 12 s: every commit times out, a transient failure.
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "CLIENT", "PAUSE", "12000", "WRITE"
        )
        paused_at = time.monotonic()
        landed += await produce_positions(settings, messages_for(settings, second))
        code = await asyncio.to_thread(worker.proc.wait, 30)
        took = time.monotonic() - paused_at
    finally:
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "CLIENT", "UNPAUSE"
        )
        await admin.aclose()
    assert code != 0, f"the worker should fail loudly past its retry budget:\n{worker.log()}"
    # The budget, a call's time bound and the way out (Kafka commit, leaving the group).
    assert took < 2 + 1 + 10, f"took {took:.1f} s to exit:\n{worker.log()}"
    assert log_has(worker, r"giving up"), worker.log()
    await assert_commits_within_applied(settings, store)

    final = WorkerProcess(settings, tmp_path, name="after-budget")
    workers.append(final)
    await final.wait_ready()
    await wait_applied(store, high_watermarks(landed), final, timeout_s=90)
    assert final.terminate() == 0, final.log()
    everything = first + second
    ref = reference(everything, settings.dedup_window_s)
    leads = {s.lead_id for s in everything}
    await assert_states_match(store, ref, leads)
    await check_outputs(settings, ref, leads)


@bounded(120)
async def test_a_dead_letter_the_broker_refuses_stops_the_worker_before_its_commit(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    settings = settings_factory(commit_interval_s=0.1, **QUIET)
    now = int(time.time() * 1000)
    good = [event(f"dl-{i}", "page_view", f"dl-e{i}", now - 60_000 + i) for i in range(20)]
    bad = b'{"event_id": "broken", ' + b"x" * 5000  # malformed JSON: a dead letter of ~7 KB
    messages = [(settings.topic_page_views, b"k", raw) for raw in good[:10]]
    messages.append((settings.topic_page_views, b"k", bad))
    messages += [(settings.topic_page_views, b"k", raw) for raw in good[10:]]
    landed = await produce_positions(settings, messages)
    bad_tp, bad_partition, bad_offset = landed[10]
    await ensure_topics(settings)

    # The real worker, in this process, with a producer whose request limit refuses the dead
    # letter: aiokafka raises MessageSizeTooLargeError, which no retry can fix.
    metrics = create_metrics(process=False)
    sensor = PrometheusSensor(metrics, settings.input_topics)
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", max_request_size=2048
    )
    await producer.start()
    worker = ScoringWorker(
        settings, sensor, RulesHolder(RULES_FILE, sensor, settings.dedup_window_s), store, producer
    )
    stopping = asyncio.Event()
    try:
        with pytest.raises(Exception, match=r"MessageSizeTooLarge|too large"):
            await asyncio.wait_for(worker.run(stopping), 60)
    finally:
        await producer.stop()
    committed = await committed_offsets(settings)
    key = f"{bad_tp}:{bad_partition}"
    assert committed.get(key, 0) <= bad_offset, (committed, bad_offset)

    # The next worker, with a working producer, dead-letters it: nothing was lost.
    final = WorkerProcess(settings, tmp_path, name="after-dlq")
    workers.append(final)
    await final.wait_ready()

    async def dead_lettered() -> list[Any]:
        letters = await read_topic(settings, settings.topic_dead_letter, timeout_s=2)
        return [x for x in letters if (x["partition"], x["offset"]) == (bad_partition, bad_offset)]

    found = await wait_for(dead_lettered, 30)
    assert found and found[0]["reason"] == "malformed_json", final.log()
    await wait_applied(store, high_watermarks(landed), final, timeout_s=60)
    assert final.terminate() == 0, final.log()


# --------------------------------------------------------------------------- groups of workers


async def outbox_entries(store: RedisStore) -> dict[tuple[int, str], bytes]:
    """Every entry of every key group's outbox: (group, entry id) -> the encoded outputs."""
    entries = {}
    for key_group in range(store.keys.groups):
        for entry_id, encoded in await store.pending_outbox(key_group, int(time.time() * 1000)):
            entries[(key_group, entry_id)] = encoded
    return entries


async def _gone(store: RedisStore, entries: dict[tuple[int, str], bytes]) -> bool:
    return not set(entries) & set(await outbox_entries(store))


async def freeze_with_outbox(
    worker: WorkerProcess, store: RedisStore, attempts: int = 40
) -> dict[tuple[int, str], bytes]:
    """SIGSTOP `worker` at a moment it has outputs recorded but not yet acknowledged, and return
    those outbox entries: the ones still there 0.3 s and 0.6 s after the stop (the running
    workers acknowledge their own within milliseconds). Tries again (SIGCONT, a pause) until
    such a moment is caught; returns {} if none was."""
    for _ in range(attempts):
        os.kill(worker.pid, signal.SIGSTOP)
        await asyncio.sleep(0.3)
        first = await outbox_entries(store)
        await asyncio.sleep(0.3)
        stuck = {k: v for k, v in (await outbox_entries(store)).items() if k in first}
        if stuck:
            return stuck
        os.kill(worker.pid, signal.SIGCONT)
        await asyncio.sleep(0.05)
    return {}


@bounded(300)
@pytest.mark.scale
@pytest.mark.parametrize(("group_size", "backend"), [(2, "single"), (3, "single"), (3, "cluster")])
async def test_a_group_of_workers_with_ticks_losing_and_gaining_members_matches_the_reference(
    request: pytest.FixtureRequest,
    settings_factory: Callable[..., Settings],
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
    group_size: int,
    backend: str,
) -> None:
    """A backlog scored by a group whose members tick every 0.2 s: one killed (kill -9) with
    outputs in its outbox, one joining, and with 3 workers one leaving on SIGTERM, all
    mid-stream; on one Valkey, and on a 3-primary Redis Cluster with 9 key groups.

    Each worker ticks only the partitions it owns, never beyond the event time it has applied
    for them; with a shared due set a caught-up worker dropped, re-armed and handed off again
    leads whose events still waited at another worker. The dead worker's outbox is re-driven
    by the survivors (the outbox is per key group, not per worker).
    """
    rng = random.Random(1000 + group_size)
    rules_path = fast_decay_rules(tmp_path)
    on_cluster: dict[str, Any] = {}
    if backend == "cluster":
        cluster: ClusterUnderTest = request.getfixturevalue("redis_cluster")
        on_cluster = {"redis_url": cluster.url, "redis_cluster": "true", "redis_key_groups": 9}
    settings = settings_factory(
        rules_file=rules_path,
        batch_max_events=50,
        decay_tick_s=0.2,
        kafka_session_timeout_ms=10_000,
        topic_partitions=6,
        **on_cluster,
    )
    store = await open_test_store(settings)
    try:
        await _group_run(settings, store, workers, tmp_path, unique, rng, group_size)
    finally:
        await store.close()


async def _group_run(
    settings: Settings,
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
    rng: random.Random,
    group_size: int,
) -> None:
    rules = load_rules(settings.rules_file)
    now = int(time.time() * 1000)
    day = 24 * HOUR_MS
    # A month-old history: every inactivity drop is due in the past, so the final state does not
    # depend on the moment the test looks at it. All of it a backlog: events appended live with
    # month-old times would be late data for a caught-up worker, whose tick runs at the wall
    # clock.
    sent = make_traffic(rng, unique, 300, 12_000, now - 40 * day, now - 30 * day)
    landed = await produce_positions(settings, messages_for(settings, sent))
    last = high_watermarks(landed)

    def member(name: str, **update: Any) -> WorkerProcess:
        update["web_port"] = free_port()
        return WorkerProcess(settings.model_copy(update=update), tmp_path, name)

    # The victim commits in small batches: on a quiet machine a worker at full batch size can
    # finish its share of the backlog before a SIGSTOP catches it with outputs in flight.
    group = [member("g0", batch_max_events=20)]
    group += [member(f"g{i}") for i in range(1, group_size)]
    workers.extend(group)
    for w in group:
        await w.wait_ready()

    async def applied() -> int:
        return progress(await store.applied_offsets(), last)

    async def passed(share: float) -> bool:
        return await applied() >= share * len(sent)

    assert await wait_for(lambda: passed(0.1), 90, interval_s=0.02), group[0].log()
    # Killed with outputs recorded in Redis but never acknowledged by the broker.
    orphans = await freeze_with_outbox(group[0], store)
    assert orphans, "never caught the worker with outputs in flight"
    group[0].kill()
    steps = {"killed": await applied()}
    # A fourth (with 2 workers, a third) joins, and with 3 workers one leaves on SIGTERM (it
    # commits what it applied and leaves the group). The dead worker's partitions wait out its
    # session (10 s) with their backlog, so the joiner starts while there is work left.
    joiner = member("joiner")
    workers.append(joiner)
    await joiner.wait_ready()
    steps["joined"] = await applied()
    live = [*group[1:], joiner]
    if group_size >= 3:
        leaving = live.pop(0)
        steps["left"] = await applied()
        assert leaving.terminate() == 0, leaving.log()
    # Every change of the group happened mid-stream.
    assert all(n < len(sent) for n in steps.values()), (steps, len(sent))
    await wait_applied(store, last, joiner, timeout_s=120)

    async def ticked() -> bool:
        # Every drop due by now applied, by whichever worker owns the lead's partition.
        return await store.due_count(range(settings.topic_partitions), int(time.time() * 1000)) == 0

    assert await wait_for(ticked, 30), joiner.log()
    assert await wait_for(lambda: _outbox_empty(store), 30)
    # The dead worker's entries were re-sent by a survivor, which says so.
    assert await _gone(store, orphans)
    survivors = [*group[1:], joiner]  # the one that left on SIGTERM among them
    assert any(log_has(w, r"re-sent \d+ outbox entries") for w in survivors), joiner.log()
    for w in live:
        assert w.terminate() == 0, w.log()

    ref = reference(sent, settings.dedup_window_s, rules, advance_to_ms=int(time.time() * 1000))
    # (No check of the seen ids here: over a ten-day history, ids older than the dedup window
    # are trimmed by design.)
    leads = {s.lead_id for s in sent}
    await assert_states_match(store, ref, leads, rules)
    await check_outputs(settings, ref, leads)
    # Every output the dead worker had left in its outbox is on its topic (check_outputs: once
    # per id, with the reference's content).
    orphan_ids = {
        output_id(o.output.lead_id, o.output.seq)
        for encoded in orphans.values()
        for o in decode_entry(encoded)[0]
    }
    assert orphan_ids <= set(ref.outputs), "the orphaned outputs are not the reference's"
    # The tier indexes (the console's queue) hold exactly the leads of each tier above the
    # first, after kills, rebalances and drops by decay.
    keys = store.keys
    for tier_index, tier in enumerate(rules.tiers[1:], start=1):
        indexed = set()
        for key_group in range(keys.groups):
            indexed |= {k for k, _ in await store.tier_queue(key_group, tier.name, 100_000)}
        expected = {
            keys.lead(keys.lead_ref(lead)) for lead, s in ref.states.items() if s.tier == tier_index
        }
        assert indexed == expected, (tier.name, len(indexed), len(expected))
    decays = sum(1 for o in ref.outputs.values() if o.cause == "decay")
    assert decays >= 20, f"the history should decay many leads out of their tiers ({decays})"


async def _outbox_empty(store: RedisStore) -> bool:
    return await store.outbox_length() == 0


@bounded(60)
async def test_a_wrong_redis_password_fails_at_once_with_a_clear_message(
    settings_factory: Callable[..., Settings], workers: list[WorkerProcess], tmp_path: Path
) -> None:
    server = start_valkey(password="the-right-one")
    try:
        url = server.url.replace("the-right-one", "a-wrong-one")
        settings = settings_factory(redis_url=url, redis_retry_max_s=120)
        worker = WorkerProcess(settings, tmp_path, name="wrongpass")
        workers.append(worker)
        started = time.monotonic()
        code = await asyncio.to_thread(worker.proc.wait, 45)
        took = time.monotonic() - started
    finally:
        server.stop()
    assert code != 0, worker.log()
    assert took < 30, f"a wrong password is not worth {took:.0f} s of retries:\n{worker.log()}"
    log = worker.log_path.read_text(errors="replace")
    assert re.search(r"WRONGPASS|invalid username-password|authentication", log, re.I), log
    assert "a-wrong-one" not in log, "the password must never be logged"
