"""The worker on a real Redis Cluster: scoring, handoffs and decay ticks equal to the reference,
the kill -9 of a primary with its replica promoted, a slot migration mid-stream, the views and
`streamscore lead`; and replays of one backlog that hand off the same leads every time.

The clusters are Debian's redis-server in cluster mode on loopback (tests/integration/
cluster_support.py); every test has its own topics, consumer group and key prefix.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from streamscore.config import ENV_PREFIX, Settings, settings_env
from streamscore.dev import free_port
from streamscore.scoring import reference as ref_model
from streamscore.scoring.rules import CompiledRules, load_rules
from streamscore.store.client import ClusterClient
from streamscore.store.store import RedisStore
from tests.conftest import REPO_ROOT
from tests.integration.cluster_support import ClusterAdmin, NodeRow, local_cluster, raw_command
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
    open_test_store,
    produce_positions,
    read_topic,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.scale]

DAY_MS = 24 * HOUR_MS
#: 9 groups over 3 primaries whose slots are split evenly: 4, 3 and 2 groups per primary.
KEY_GROUPS = 9


@pytest.fixture
async def cluster_store(
    settings_factory: Callable[..., Settings], redis_cluster: ClusterUnderTest
) -> AsyncIterator[RedisStore]:
    """A store on the cluster with the test's prefix and KEY_GROUPS groups."""
    store = await open_test_store(
        settings_factory(redis_url=redis_cluster.url, redis_key_groups=KEY_GROUPS)
    )
    assert isinstance(store.client, ClusterClient)
    yield store
    await store.close()


def group_owners(admin: ClusterAdmin, groups: int) -> dict[int, NodeRow]:
    """The primary serving each key group's slot."""
    return {g: admin.owner(admin.keyslot(f"{{g{g}}}")) for g in range(groups)}


def leads_per_primary(store: RedisStore, admin: ClusterAdmin) -> dict[str, int]:
    """How many lead keys of the test's prefix each primary holds, counted on the primary."""
    counts: dict[str, int] = {}
    for group, owner in group_owners(admin, store.keys.groups).items():
        pattern = f"{store.keys.prefix}:{{g{group}}}:lead:*"
        keys = raw_command(admin.at(owner), "KEYS", pattern)
        counts[owner.address] = counts.get(owner.address, 0) + len(keys)
    return counts


async def wait_ticked(store: RedisStore, partitions: int, worker: WorkerProcess) -> None:
    """Until no lead of any partition has an inactivity drop due by now."""

    async def ticked() -> bool:
        return await store.due_count(range(partitions), int(time.time() * 1000)) == 0

    assert await wait_for(ticked, 30), worker.log()


def check_view(
    worker: WorkerProcess, lead_id: str, want: ref_model.LeadState, rules: CompiledRules
) -> None:
    """/leads/{id} on the worker shows the reference's tier and score (as of now)."""
    status, body = worker.get("/leads/" + urllib.parse.quote(lead_id, safe=""))
    assert status == 200, (lead_id, status, body)
    shown = orjson.loads(body)
    assert shown["lead_id"] == lead_id
    assert shown["tier"] == rules.tiers[want.tier].name, (shown, want)
    expected = ref_model.score_at(want, rules, int(time.time() * 1000))
    assert math.isclose(shown["score"], expected, abs_tol=0.01), (shown["score"], expected)


def lead_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`streamscore lead ARGS` in a child process configured by `settings` alone."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "streamscore.cli", "lead", *args],
        cwd=REPO_ROOT,
        env={**clean, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --------------------------------------------------------------------------- a worker on a cluster


@bounded(240)
async def test_a_worker_on_redis_cluster_scores_hands_off_and_ticks_as_the_reference(
    settings_factory: Callable[..., Settings],
    redis_cluster: ClusterUnderTest,
    cluster_store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
) -> None:
    """9 key groups over 3 primaries; a month-old backlog, so every inactivity drop is due and
    the decay tick must apply them all; the view and `streamscore lead` read the cluster."""
    rng = random.Random(1500)
    rules_path = fast_decay_rules(tmp_path)
    rules = load_rules(rules_path)
    settings = settings_factory(
        redis_url=redis_cluster.url,
        redis_cluster="true",
        redis_key_groups=KEY_GROUPS,
        rules_file=rules_path,
        batch_max_events=300,
        decay_tick_s=0.2,
    )
    now = int(time.time() * 1000)
    sent = make_traffic(rng, unique, 150, 3000, now - 40 * DAY_MS, now - 30 * DAY_MS)
    landed = await produce_positions(settings, messages_for(settings, sent))
    worker = WorkerProcess(settings, tmp_path, name="cluster")
    workers.append(worker)
    await worker.wait_ready()
    await wait_applied(cluster_store, high_watermarks(landed), worker, timeout_s=120)
    await wait_ticked(cluster_store, settings.topic_partitions, worker)

    ref = reference(sent, settings.dedup_window_s, rules, advance_to_ms=int(time.time() * 1000))
    leads = {s.lead_id for s in sent}
    await assert_states_match(cluster_store, ref, leads, rules)
    await check_outputs(settings, ref, leads)
    decays = sum(1 for o in ref.outputs.values() if o.cause == "decay")
    assert decays >= 20, f"the history should decay many leads out of their tiers ({decays})"
    # The leads are spread over every primary, each group on the primary of its slot.
    spread = leads_per_primary(cluster_store, redis_cluster.admin)
    assert len(spread) == 3 and all(n > 0 for n in spread.values()), spread
    assert sum(spread.values()) == len(leads)

    # The HTTP view and the CLI read the cluster.
    busiest = sorted(ref.states.values(), key=lambda s: (-s.tier, -(s.last_ms or 0)))[:5]
    for state in busiest:
        check_view(worker, state.lead_id, state, rules)
    shown = lead_cli(settings, busiest[0].lead_id, "--json")
    assert shown.returncode == 0, shown.stderr
    info = orjson.loads(shown.stdout)
    assert (info["lead_id"], info["tier"]) == (
        busiest[0].lead_id,
        rules.tiers[busiest[0].tier].name,
    )
    assert lead_cli(settings, f"nobody-{unique}").returncode == 1
    assert worker.terminate() == 0, worker.log()


# --------------------------------------------------------------------------- failover


@bounded(240)
@pytest.mark.parametrize("promotion", ["takeover", "automatic"])
async def test_the_kill_of_a_primary_mid_stream_loses_nothing_and_counts_nothing_twice(
    settings_factory: Callable[..., Settings],
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
    promotion: str,
) -> None:
    """SIGKILL the primary of the most key groups while the worker scores a backlog. Its
    replica is promoted by the cluster itself (automatic: after the 2 s node timeout), or held
    back until /readyz has reported the outage for a while and then told to take over.

    A cluster of its own (3 primaries, a replica each): the session's failover cluster may
    have lost its replicas to earlier tests.
    """
    rng = random.Random(1600)
    with local_cluster(primaries=3, replicas_per_primary=1, node_timeout_ms=2000) as cluster:
        admin = cluster.admin
        seeds = ",".join(s.address for s in cluster.servers[:3])
        settings = settings_factory(
            redis_url=f"redis://{seeds}",
            redis_cluster="true",
            redis_key_groups=KEY_GROUPS,
            batch_max_events=100,
            redis_retry_max_s=120,
            **QUIET,
        )
        store = await open_test_store(settings)
        try:
            now = int(time.time() * 1000)
            sent = make_single_topic_traffic(
                rng, unique, 200, 8000, now - 3 * HOUR_MS, now - HOUR_MS
            )
            landed = await produce_positions(settings, messages_for(settings, sent))
            last = high_watermarks(landed)
            owners = group_owners(admin, KEY_GROUPS)
            victim = max(owners.values(), key=lambda r: sum(o == r for o in owners.values()))
            replica = admin.replica_of(victim)
            victim_group = next(g for g, r in owners.items() if r == victim)

            worker = WorkerProcess(settings, tmp_path, name="failover")
            workers.append(worker)
            await worker.wait_ready()

            async def passed(share: float) -> bool:
                return progress(await store.applied_offsets(), last) >= share * len(sent)

            assert await wait_for(lambda: passed(0.25), 90, interval_s=0.02), worker.log()
            held = promotion == "takeover"
            if held:
                no_failover = ("CONFIG", "SET", "cluster-replica-no-failover", "yes")
                raw_command(admin.at(replica), *no_failover)
            before = progress(await store.applied_offsets(), last)
            cluster.kill(victim.port)
            assert before < 0.9 * len(sent), "the backlog was nearly done before the kill"

            async def unready() -> bool:
                return await asyncio.to_thread(readiness, worker) == (503, 0.0)

            assert await wait_for(unready, 20), worker.log()
            # Not ready, and why; while the replica is held back, the outage lasts (once the
            # cluster marks the primary failed, every node answers CLUSTERDOWN) and the worker
            # stays up through it.
            _, body = worker.get("/readyz")
            assert orjson.loads(body)["redis"] == "transient", body
            if held:
                for _ in range(3):
                    await asyncio.sleep(1)
                    assert await asyncio.to_thread(readiness, worker) == (503, 0.0)
                    assert worker.proc.poll() is None, worker.log()
                raw_command(admin.at(replica), "CLUSTER", "FAILOVER", "TAKEOVER")

            async def ready() -> bool:
                return await asyncio.to_thread(readiness, worker) == (200, 1.0)

            assert await wait_for(ready, 60), worker.log()
            # The test's own client saw the dead node too: a fresh one reads the new slot map.
            await store.close()
            store = await open_test_store(settings)
            await wait_applied(store, last, worker, timeout_s=120)
            assert admin.owner(admin.keyslot(f"{{g{victim_group}}}")).address == replica.address
            assert worker.terminate() == 0, worker.log()

            ref = reference(sent, settings.dedup_window_s)
            leads = {s.lead_id for s in sent}
            await assert_all_seen(store, sent)
            await assert_states_match(store, ref, leads)
            await check_outputs(settings, ref, leads)
        finally:
            await store.close()


# --------------------------------------------------------------------------- slot migration


def migrate_in_steps(
    admin: ClusterAdmin, slot: int, source: NodeRow, target: NodeRow, rounds: int
) -> int:
    """Move `slot` the way `redis-cli --cluster reshard` does, in `rounds` passes of MIGRATE
    while writers go on (keys the worker creates meanwhile land on the target, through ASK);
    returns the keys moved."""
    admin.begin_migration(slot, source, target)
    moved = 0
    for _ in range(rounds):
        moved += admin.migrate_keys(slot, source, target)
        time.sleep(0.3)
    while count := admin.migrate_keys(slot, source, target):  # until the source holds none
        moved += count
    admin.finish_migration(slot, target)
    return moved


@bounded(240)
async def test_a_slot_migration_mid_stream_is_followed_without_loss(
    settings_factory: Callable[..., Settings],
    redis_cluster: ClusterUnderTest,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
) -> None:
    """The slot of one key group moves to another primary (SETSLOT IMPORTING/MIGRATING, MIGRATE
    in passes, SETSLOT NODE) while the worker commits to it: MOVED, ASK and TRYAGAIN are
    followed or retried, and the result is the reference's. The slot is moved back afterwards,
    for the session's other tests."""
    rng = random.Random(1700)
    admin = redis_cluster.admin
    settings = settings_factory(
        redis_url=redis_cluster.url,
        redis_cluster="true",
        redis_key_groups=KEY_GROUPS,
        batch_max_events=100,
        **QUIET,
    )
    store = await open_test_store(settings)
    owners = group_owners(admin, KEY_GROUPS)
    # The busiest primary gives one of its groups to the least busy one.
    load = {
        r.node_id: sum(o.node_id == r.node_id for o in owners.values()) for r in owners.values()
    }
    source = max(owners.values(), key=lambda r: load[r.node_id])
    target = min(owners.values(), key=lambda r: load[r.node_id])
    group = next(g for g, r in owners.items() if r.node_id == source.node_id)
    slot = admin.keyslot(f"{{g{group}}}")
    try:
        now = int(time.time() * 1000)
        sent = make_single_topic_traffic(rng, unique, 200, 8000, now - 3 * HOUR_MS, now - HOUR_MS)
        landed = await produce_positions(settings, messages_for(settings, sent))
        last = high_watermarks(landed)
        worker = WorkerProcess(settings, tmp_path, name="migrate")
        workers.append(worker)
        await worker.wait_ready()

        async def passed(share: float) -> bool:
            return progress(await store.applied_offsets(), last) >= share * len(sent)

        assert await wait_for(lambda: passed(0.2), 90, interval_s=0.02), worker.log()
        before = progress(await store.applied_offsets(), last)
        moved = await asyncio.to_thread(migrate_in_steps, admin, slot, source, target, 4)
        after = progress(await store.applied_offsets(), last)
        assert moved > 0
        assert before < after < len(sent), "the migration should happen while scoring goes on"
        assert admin.owner(slot).node_id == target.node_id

        await wait_applied(store, last, worker, timeout_s=120)
        assert worker.proc.poll() is None, worker.log()
        assert worker.terminate() == 0, worker.log()
        # A commit whose keys the migration had split was refused (TRYAGAIN) and retried.
        log = worker.log_path.read_text(errors="replace")
        assert "tryagain" in log and "redis recovered" in log, log[-4000:]
        ref = reference(sent, settings.dedup_window_s)
        leads = {s.lead_id for s in sent}
        await assert_all_seen(store, sent)
        await assert_states_match(store, ref, leads)
        await check_outputs(settings, ref, leads)
        # The group's leads now live on the target, none on the source.
        pattern = f"{store.keys.prefix}:{{g{group}}}:lead:*"
        assert raw_command(admin.at(target), "KEYS", pattern)
        assert not raw_command(admin.at(source), "KEYS", pattern)
    finally:
        await store.close()
        if admin.owner(slot).node_id != source.node_id:
            await asyncio.to_thread(admin.move_slot, slot, source)


# --------------------------------------------------------------------------- members of a group


def assignment(worker: WorkerProcess) -> tuple[int, int] | None:
    """(/readyz status, partitions assigned), or None while the worker does not answer."""
    try:
        status, body = worker.get("/readyz")
    except OSError:
        return None
    return status, int(orjson.loads(body).get("partitions_assigned", -1))


@bounded(180)
async def test_a_worker_beyond_the_partitions_is_not_ready_and_takes_over_at_once_on_sigterm(
    settings_factory: Callable[..., Settings],
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    """One partition per input topic and two workers in one group: the range assignor gives
    every partition to one of them, and the other holds nothing and is not ready (/readyz 503,
    no partition). The owner leaves on SIGTERM, and the other owns the partitions and is ready
    within the 30 s session timeout: a stopping worker leaves the group at once. Had it not, the
    broker would notice it gone only when its session ran out (at least 25 s after the SIGTERM:
    one heartbeat interval, 5 s, may have passed since its last heartbeat) and the rebalance's
    join round would come on top; with the leave, the survivor sees the rebalance at its next
    heartbeat (within 5 s) and the join round follows (on Tansu about half the session
    timeout, as every rebalance here)."""
    session_s = 30.0
    settings = settings_factory(topic_partitions=1, kafka_session_timeout_ms=int(session_s * 1000))
    inputs = len(settings.subscribed_topics)

    def member(name: str) -> WorkerProcess:
        started = WorkerProcess(
            settings.model_copy(update={"web_port": free_port()}), tmp_path, name
        )
        workers.append(started)
        return started

    first = member("first")
    await first.wait_ready()  # it owns every partition; the second joins a running group
    group = [first, member("second")]

    async def settled() -> tuple[WorkerProcess, WorkerProcess] | None:
        states = [await asyncio.to_thread(assignment, w) for w in group]
        for owner, idle, owner_state, idle_state in (
            (group[0], group[1], states[0], states[1]),
            (group[1], group[0], states[1], states[0]),
        ):
            # The idle one has been through a rebalance (it logs the empty assignment), so it
            # is in the group, not still joining.
            joined = "assigned 0 partitions" in idle.log_path.read_text(errors="replace")
            if owner_state == (200, inputs) and idle_state == (503, 0) and joined:
                return owner, idle
        return None

    found = await wait_for(settled, 90)
    assert found, f"never one owner and one idle member:\n{group[0].log()}\n{group[1].log()}"
    owner, idle = found
    # Still so a moment later: the idle member is not ready while it holds nothing.
    await asyncio.sleep(1)
    assert await asyncio.to_thread(assignment, idle) == (503, 0), idle.log()

    left = time.monotonic()
    assert owner.terminate() == 0, owner.log()

    async def took_over() -> bool:
        return await asyncio.to_thread(assignment, idle) == (200, inputs)

    assert await wait_for(took_over, session_s * 2), idle.log()
    elapsed = time.monotonic() - left
    assert elapsed < session_s, f"took over after {elapsed:.1f} s: the session ran out"
    assert idle.terminate() == 0, idle.log()


# --------------------------------------------------------------------------- exact replays


async def handoffs_on(settings: Settings) -> dict[str, tuple[str, str | None, float]]:
    """The handoffs on the settings' handoff topic: id -> (lead, triggering event, score)."""
    found = await asyncio.wait_for(read_topic(settings, settings.topic_handoffs, timeout_s=20), 60)
    return {
        m["handoff_id"]: (m["lead_id"], m["triggering_event_id"], round(m["score"], 6))
        for m in found
    }


@bounded(300)
async def test_replays_of_one_backlog_with_default_settings_hand_off_the_same_leads(
    settings_factory: Callable[..., Settings],
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
) -> None:
    """One backlog over 5 topics x 4 partitions (a lead's events on several topics), replayed
    three times from the start by a fresh consumer group on a fresh key prefix, every setting
    at its default: the same handoffs (ids, triggering events, scores) each time, and the
    reference's. Only the output topics differ between replays, to tell their outputs apart."""
    rng = random.Random(1800)
    base = settings_factory()
    now = int(time.time() * 1000)
    sent = make_traffic(rng, unique, 800, 20_000, now - 6 * HOUR_MS, now - HOUR_MS)
    landed = await produce_positions(base, messages_for(base, sent))
    ref = reference(sent, base.dedup_window_s)
    leads = {s.lead_id for s in sent}
    want = {
        oid: (o.lead_id, o.event_id, round(o.score, 6))
        for oid, o in ref.outputs.items()
        if o.kind == "handoff"
    }
    assert len(want) >= 50, f"too few handoffs to compare replays ({len(want)})"
    replays = []
    for run in range(3):
        settings = base.model_copy(
            update={
                "consumer_group": f"{base.consumer_group}-replay{run}",
                "redis_key_prefix": f"{base.redis_key_prefix}:r{run}",
                "topic_handoffs": f"{base.topic_handoffs}-r{run}",
                "topic_tier_changes": f"{base.topic_tier_changes}-r{run}",
                "web_port": free_port(),
            }
        )
        store = await open_test_store(settings)
        try:
            worker = WorkerProcess(settings, tmp_path, name=f"replay{run}")
            workers.append(worker)
            await worker.wait_ready()
            await wait_applied(store, high_watermarks(landed), worker, timeout_s=180)
            assert worker.terminate() == 0, worker.log()
            await assert_states_match(store, ref, leads)
        finally:
            await store.close()
        await check_outputs(settings, ref, leads)
        replays.append(await handoffs_on(settings))
    for run, got in enumerate(replays):
        assert got == want, (
            f"replay {run}: {len(set(got) ^ set(want))} handoffs differ from the reference's"
        )
