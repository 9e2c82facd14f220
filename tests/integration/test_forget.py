"""Forget (issue 14.6): DELETE /leads/{id} and `streamscore forget` against a running worker.

A real worker process, the session's broker and Redis (and the Redis Cluster for the store
part): the lead's state, de-duplication ids, sorted-set memberships and pending outputs go, a
schema-valid tombstone is emitted, and neither late events, a redelivery, a concurrent commit nor
a replay into another key prefix brings the lead back.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from streamscore import dev
from streamscore.config import Settings, settings_env
from streamscore.dev.state import remove_state, write_state
from streamscore.runtime.forget import forget_lead
from streamscore.scoring.explain import describe_lead
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import load_rules
from streamscore.scoring.state import new_lead
from streamscore.store.client import open_client
from streamscore.store.codec import encode_lead
from streamscore.store.commit import GroupCommit, LeadWrite, versioned
from streamscore.store.forgotten import member
from streamscore.store.keys import KeySpace
from streamscore.store.outbox import decode_entry, encode_outputs
from streamscore.store.store import RedisStore
from tests.conftest import REPO_ROOT, RULES_FILE, run_cli
from tests.integration.conftest import ClusterUnderTest
from tests.integration.faults_support import QUIET
from tests.integration.harness import (
    WorkerProcess,
    bounded,
    event,
    metric_total,
    open_test_store,
    produce,
    read_topic,
    topic_for,
    wait_for,
)

TOKEN = "forget-test-token-0123456789"
SCHEMA = Draft202012Validator(json.loads((REPO_ROOT / "schemas" / "forgotten.v1.json").read_text()))
TIERS = [t.name for t in load_rules(RULES_FILE).tiers]
OUTPUT = Output(
    "handoff", "alice", 1, "warm", "hot", 91.5, 70.0, 21.5, 2, 3, (("trial", 25.0),),
    "evt-1", 1_760_000_000_000, "event", "rules-1",
)  # fmt: skip


def call(worker: WorkerProcess, method: str, path: str, token: str | None) -> tuple[int, Any]:
    req = urllib.request.Request(worker.url(path), method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def warm_events(
    settings: Settings, lead_id: str, first_ms: int, tag: str
) -> list[tuple[str, bytes, bytes]]:
    """Events that make a lead warm (77 points): it sits in a tier index and a due set."""
    kinds: list[tuple[str, dict[str, Any]]] = [("demo_request", {}), ("trial_signup", {})]
    kinds += [("page_view", {"properties": {"path": "/pricing"}})] * 2
    return [
        (
            topic_for(settings, kind),
            lead_id.encode(),
            event(lead_id, kind, f"{tag}-{lead_id}-{i}", first_ms + i * 1000, **extra),
        )
        for i, (kind, extra) in enumerate(kinds)
    ]


async def counted(worker: WorkerProcess) -> float:
    text = (await asyncio.to_thread(worker.get, "/metrics"))[1].decode()
    return metric_total(text, "streamscore_events_total")


async def metric(worker: WorkerProcess, name: str, **labels: str) -> float:
    text = (await asyncio.to_thread(worker.get, "/metrics"))[1].decode()
    return metric_total(text, name, **labels)


async def wait_counted(worker: WorkerProcess, n: int, timeout_s: float = 60) -> None:
    async def done() -> bool:
        return await counted(worker) >= n

    assert await wait_for(done, timeout_s), (await counted(worker), n, worker.log())


async def memberships(store: RedisStore, lead_id: str, partitions: int) -> list[str]:
    """The sorted sets of its group that hold the lead's key."""
    keys = store.keys
    ref = keys.lead_ref(lead_id)
    key = keys.lead(ref)
    candidates = [keys.tier_index(ref.group, t) for t in TIERS[1:]]
    for p in range(partitions):
        candidates += [keys.due(ref.group, p), keys.sla_due(ref.group, p)]
    found = []
    for name in candidates:
        if await store.client.execute("ZSCORE", name, key, key=name) is not None:
            found.append(name)
    return found


@bounded(240)
async def test_delete_forgets_the_lead_and_nothing_brings_it_back(
    settings_factory: Callable[..., Settings], workers: list[WorkerProcess], tmp_path: Path
) -> None:
    settings = settings_factory(web_token=TOKEN, outbox_redrive_s=3600, **QUIET)
    store = await open_test_store(settings)
    try:
        now = int(time.time() * 1000)
        sent = warm_events(settings, "alice", now - 60_000, "a")
        sent += warm_events(settings, "bob", now - 60_000, "b")
        await produce(settings, sent)
        worker = WorkerProcess(settings, tmp_path)
        workers.append(worker)
        await worker.wait_ready()
        await wait_counted(worker, len(sent))
        assert await store.lead_state("alice") is not None
        assert await memberships(store, "alice", settings.topic_partitions)  # tier index, due

        # An output of alice's and one of bob's still pending in the outbox (a broker outage).
        group = store.keys.lead_ref("alice").group
        pending = await store.commit(
            GroupCommit(group).pack(store.keys),
            encode_outputs([OUTPUT, OUTPUT._replace(lead_id="bob")], now),
        )
        assert pending.ok

        assert call(worker, "DELETE", "/leads/alice", None)[0] == 401
        assert call(worker, "DELETE", "/leads/alice", "wrong-token-wrong-token")[0] == 401
        assert await store.lead_state("alice") is not None
        status, body = call(worker, "DELETE", "/leads/alice?reason=ticket%2042", TOKEN)
        assert status == 200, body
        assert body["result"] == "forgotten" and body["tombstone"]["sent"] is True
        assert body["outputs_withdrawn"] >= 1

        # State (with its de-duplication ids), sorted sets and pending outputs: gone.
        assert await store.lead_state("alice") is None
        assert await memberships(store, "alice", settings.topic_partitions) == []
        assert store.keys.lead_ref("alice").digest in await store.forgotten_digests()
        left = [decode_entry(v)[0] for _, v in await store.outbox_entries(group)]
        assert [o.output.lead_id for entry in left for o in entry] == ["bob"]
        assert await store.lead_state("bob") is not None
        assert call(worker, "GET", "/leads/alice", TOKEN)[0] == 404

        [tombstone] = [
            m for m in await read_topic(settings, settings.topic_forgotten)
            if m["lead_id"] == "alice"
        ]  # fmt: skip
        assert not [e.message for e in SCHEMA.iter_errors(tombstone)]
        assert tombstone["reason"] == "ticket 42" and tombstone["result"] == "forgotten"
        assert await metric(worker, "streamscore_forget_requests_total", result="forgotten") == 1

        # Late events from before the forget, one of them a redelivery of an applied event:
        # dropped and counted. An event after the forget starts a fresh lead.
        forget_ms = int(time.time() * 1000) - 500  # the forget happened before this
        late = [
            (settings.topic_page_views, b"alice",
             event("alice", "page_view", "late-1", forget_ms - 10_000,
                   properties={"path": "/pricing"})),
            sent[0],
        ]  # fmt: skip
        await produce(settings, late)
        await wait_counted(worker, len(sent) + len(late))
        assert await store.lead_state("alice") is None
        assert await metric(worker, "streamscore_forgotten_dropped_total") == 2
        assert await metric(worker, "streamscore_events_total", outcome="forgotten") == 2

        fresh = event("alice", "page_view", "after-1", int(time.time() * 1000) + 1000)
        await produce(settings, [(settings.topic_page_views, b"alice", fresh)])
        await wait_counted(worker, len(sent) + len(late) + 1)
        state = await store.lead_state("alice")
        assert state is not None
        rules = load_rules(RULES_FILE)
        info = describe_lead(state, rules, int(time.time() * 1000))
        assert [c["rule"] for c in info["contributions"]] == ["page_view"], info
        assert worker.terminate() == 0

        # A replay of the whole history into its own key prefix, sharing the live forgotten
        # sets: alice's events up to the forget are dropped, bob and the fresh alice come back.
        replay = settings.model_copy(
            update={
                "consumer_group": f"{settings.consumer_group}-replay",
                "redis_key_prefix": f"{settings.redis_key_prefix}-replay",
                "redis_forgotten_prefix": settings.redis_key_prefix,
                "web_port": dev.free_port(),
            }
        )
        again = WorkerProcess(replay, tmp_path, name="replay")
        workers.append(again)
        await again.wait_ready()
        total = len(sent) + len(late) + 1
        await wait_counted(again, total)
        replayed = await open_test_store(replay)
        try:
            state = await replayed.lead_state("alice")
            assert state is not None
            info = describe_lead(state, rules, int(time.time() * 1000))
            assert [c["rule"] for c in info["contributions"]] == ["page_view"], info
            assert await replayed.lead_state("bob") is not None
        finally:
            await replayed.close()
        assert await metric(again, "streamscore_forgotten_dropped_total") == 4 + len(late)
        assert again.terminate() == 0
    finally:
        await store.close()


# --------------------------------------------------------------------------- the store part


@pytest.fixture(params=["single", "cluster"])
async def any_store(
    request: pytest.FixtureRequest, redis_url: str, redis_cluster: ClusterUnderTest
) -> AsyncIterator[RedisStore]:
    """A store with its own key prefix, on the session's server or on the 3-primary cluster."""
    cluster = request.param == "cluster"
    client = await open_client(redis_cluster.url if cluster else redis_url, cluster=cluster)
    store = RedisStore(client, KeySpace(f"fg:{uuid.uuid4().hex[:8]}", groups=3 if cluster else 1))
    yield store
    await store.close()


async def write_lead(store: RedisStore, lead_id: str, version: int, expected: bytes) -> bytes:
    """Store a warm lead of partition 1 (due set and tier index), fenced on `expected`."""
    keys = store.keys
    ref = keys.lead_ref(lead_id)
    state = new_lead(lead_id)
    state.partition = 1
    value = versioned(version, encode_lead(state))
    sets = ((keys.due(ref.group, 1), 5_000.0), (keys.tier_index(ref.group, "warm"), 50.0))
    commit = GroupCommit(ref.group)
    commit.leads.append(LeadWrite(keys.lead(ref), expected, value, sets))
    assert (await store.commit(commit.pack(keys), encode_outputs([OUTPUT], 1))).ok
    return value[:8]


async def test_forget_lead_deletes_withdraws_and_fences_later_commits(
    any_store: RedisStore,
) -> None:
    store, keys = any_store, any_store.keys
    ref = keys.lead_ref("alice")
    g = ref.group
    await write_lead(store, "alice", 1, b"")
    done = await forget_lead(
        store, "alice", topic="t.forgotten", tier_names=TIERS, forget_ms=1_000, reason=None
    )
    assert (done.result, done.withdrawn, done.group) == ("forgotten", 1, g)
    assert await store.lead_state("alice") is None
    assert await store.due_keys(g, 1, 10_000, 10) == []
    assert await store.tier_queue(g, "warm", 10) == []
    assert await store.forgotten_members(g) == [member(ref.digest, 1_000)]
    [(entry, value)] = await store.outbox_entries(g)  # only the tombstone is pending
    assert entry == done.outbox_entry and decode_entry(value)[1] == [done.tombstone]

    # A commit decided before the forget (it knew an empty set) writes nothing; one that has
    # read the set again does; an unchecked one (forgotten_size None) is not fenced.
    stale = GroupCommit(g, forgotten_size=0)
    stale.leads.append(LeadWrite(keys.lead(ref), b"", versioned(9, b"x")))
    result = await store.commit(stale.pack(keys), b"")
    assert not result.ok and result.conflict.startswith("forgotten ")
    assert await store.read_lead("alice") is None
    stale.forgotten_size = 1
    assert (await store.commit(stale.pack(keys), b"")).ok

    again = await forget_lead(
        store, "bob", topic="t.forgotten", tier_names=TIERS, forget_ms=2_000, reason="x"
    )
    assert again.result == "not_found"
    await store.client.execute("DEL", keys.lead(ref), key=keys.lead(ref))
    third = await forget_lead(
        store, "alice", topic="t.forgotten", tier_names=TIERS, forget_ms=3_000, reason=None
    )
    assert third.result == "already_forgotten"
    known = await store.forgotten_leads()
    assert known.until_ms(ref.digest) == 3_000 and known.blocks(ref.digest, 2_999)


async def test_a_forget_racing_a_write_tries_again_and_wins(
    any_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = any_store
    prefix = await write_lead(store, "alice", 1, b"")
    reads = store.outbox_entries
    raced: list[int] = []

    async def racing_read(group: int) -> list[tuple[str, bytes]]:
        # The worker commits the lead between the forget's read of it and its commit call.
        if not raced:
            raced.append(group)
            await write_lead(store, "alice", 2, prefix)
        return await reads(group)

    monkeypatch.setattr(store, "outbox_entries", racing_read)
    done = await forget_lead(
        store, "alice", topic="t.forgotten", tier_names=TIERS, forget_ms=1_000, reason=None
    )
    assert raced and done.result == "forgotten" and done.withdrawn == 2
    assert await store.lead_state("alice") is None


async def test_a_replay_prefix_shares_the_forgotten_sets_on_one_slot(
    any_store: RedisStore,
) -> None:
    live = any_store
    replay = RedisStore(
        live.client, KeySpace(f"{live.keys.prefix}-replay", live.keys.groups, live.keys.prefix)
    )
    await forget_lead(
        live, "alice", topic="t.forgotten", tier_names=TIERS, forget_ms=1_000, reason=None
    )
    ref = replay.keys.lead_ref("alice")
    assert (await replay.forgotten_leads()).blocks(ref.digest, 1_000)
    # One call with the replay's lead key and the live forgotten set: legal on a cluster.
    commit = GroupCommit(ref.group, forgotten_size=0)
    commit.leads.append(LeadWrite(replay.keys.lead(ref), b"", versioned(1, b"x")))
    result = await replay.commit(commit.pack(replay.keys), b"")
    assert not result.ok and result.conflict.startswith("forgotten ")
    commit.forgotten_size = 1
    assert (await replay.commit(commit.pack(replay.keys), b"")).ok


# --------------------------------------------------------------------------- races, the CLI


@pytest.mark.parametrize("backend", ["single", "cluster"])
@bounded(180)
async def test_a_forget_amid_a_stream_of_the_leads_events_is_not_undone(
    settings_factory: Callable[..., Settings],
    workers: list[WorkerProcess],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    """The worker commits the lead again and again while it is forgotten; every event predates
    the forget, so once all are handled the lead must be absent, whichever commit came first.
    On one server, and on the Redis Cluster with three key groups."""
    extra: dict[str, Any] = {}
    if backend == "cluster":
        cluster: ClusterUnderTest = request.getfixturevalue("redis_cluster")
        extra = {"redis_url": cluster.url, "redis_cluster": "true", "redis_key_groups": 3}
    settings = settings_factory(web_token=TOKEN, commit_interval_s=0.1, **QUIET, **extra)
    worker = WorkerProcess(settings, tmp_path)
    workers.append(worker)
    await worker.wait_ready()
    start = int(time.time() * 1000) - 120_000
    total, chunk = 400, 20

    def batch(i: int) -> list[tuple[str, bytes, bytes]]:
        return [
            (settings.topic_page_views, b"carol",
             event("carol", "page_view", f"c-{j}", start + j, properties={"path": "/demo"}))
            for j in range(i, i + chunk)
        ]  # fmt: skip

    async def stream() -> None:
        for i in range(0, total, chunk):
            await produce(settings, batch(i))
            await asyncio.sleep(0.05)

    producing = asyncio.create_task(stream())
    try:
        await wait_counted(worker, 3 * chunk)
        status, body = await asyncio.to_thread(call, worker, "DELETE", "/leads/carol", TOKEN)
        assert status == 200 and body["result"] == "forgotten", body
    finally:
        await producing
    await wait_counted(worker, total)
    store = await open_test_store(settings)
    try:
        assert await store.lead_state("carol") is None
    finally:
        await store.close()
    dropped = await metric(worker, "streamscore_forgotten_dropped_total")
    assert 0 < dropped <= total - 3 * chunk
    assert worker.terminate() == 0


def cli_env(runtime_dir: Path, **settings: str) -> dict[str, str]:
    return {"XDG_RUNTIME_DIR": str(runtime_dir), **settings}


@bounded(120)
async def test_the_cli_forgets_through_a_running_dev_stack_or_says_what_to_set(
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_factory()
    store = await open_test_store(settings)
    try:
        await write_lead(store, "dana", 1, b"")
        # A running `streamscore dev` as other commands see it: its state file (this process
        # stands in for it, so its PID is alive).
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
        path = write_state(settings, "http://127.0.0.1:1")
        assert path is not None
        found = await asyncio.to_thread(
            run_cli, "forget", "dana", "--reason", "erasure request", env=cli_env(tmp_path)
        )
        assert found.returncode == 0, found.stderr
        assert "using `streamscore dev`" in found.stderr
        assert "forgot lead dana: its state is deleted" in found.stdout
        assert await store.lead_state("dana") is None
        [tombstone] = await read_topic(settings, settings.topic_forgotten)
        assert tombstone["lead_id"] == "dana" and tombstone["reason"] == "erasure request"
        assert not [e.message for e in SCHEMA.iter_errors(tombstone)]
        remove_state(path)

        # No stack and nothing set: one line naming the setting, no traceback.
        env = cli_env(tmp_path, STREAMSCORE_REDIS_URL="redis://127.0.0.1:1/0")
        lost = await asyncio.to_thread(run_cli, "forget", "dana", env=env)
        assert lost.returncode == 1
        assert "STREAMSCORE_REDIS_URL" in lost.stderr and "Traceback" not in lost.stderr

        # Redis there, the broker not: forgotten all the same, the tombstone waits in the
        # outbox for a worker's re-drive, and the message says which setting to check.
        env = {k: v for k, v in settings_env(settings).items() if "TOPIC" in k or "REDIS" in k}
        env = cli_env(tmp_path, **env, STREAMSCORE_KAFKA_BOOTSTRAP="127.0.0.1:1")
        await write_lead(store, "erin", 1, b"")
        queued = await asyncio.to_thread(run_cli, "forget", "erin", "--json", env=env)
        assert queued.returncode == 0, queued.stderr
        assert "STREAMSCORE_KAFKA_BOOTSTRAP" in queued.stderr
        assert json.loads(queued.stdout)["lead_id"] == "erin"
        group = store.keys.lead_ref("erin").group
        waiting = [decode_entry(v)[1] for _, v in await store.outbox_entries(group)]
        assert any(r.topic == settings.topic_forgotten for rs in waiting for r in rs)
    finally:
        await store.close()
