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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from streamscore import dev
from streamscore.config import Settings
from streamscore.scoring.explain import describe_lead
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import load_rules
from streamscore.store.commit import GroupCommit
from streamscore.store.outbox import decode_entry, encode_outputs
from streamscore.store.store import RedisStore
from tests.conftest import REPO_ROOT, RULES_FILE
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


def request(worker: WorkerProcess, method: str, path: str, token: str | None) -> tuple[int, Any]:
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
    kinds = [("demo_request", {}), ("trial_signup", {})]
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

        assert request(worker, "DELETE", "/leads/alice", None)[0] == 401
        assert request(worker, "DELETE", "/leads/alice", "wrong-token-wrong-token")[0] == 401
        assert await store.lead_state("alice") is not None
        status, body = request(worker, "DELETE", "/leads/alice?reason=ticket%2042", TOKEN)
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
        assert request(worker, "GET", "/leads/alice", TOKEN)[0] == 404

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
