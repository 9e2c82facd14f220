"""Replay: the retained history rescored under candidate rules into a namespace of its own.

Each test produces a stream, lets a live worker score it, and replays it on the real broker and
Redis. What a replay holds is checked against the reference model under the candidate rules;
what live holds is checked byte for byte to be untouched.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamscore.config import Settings, settings_env
from streamscore.errors import StreamscoreError
from streamscore.events import Limits, parse_event
from streamscore.events.types import TOPIC_BY_TYPE, EventType
from streamscore.outcomes.kpi import SEP
from streamscore.runtime.replay import ReplayRequest, read_meta, replay_topics, run_replay
from streamscore.runtime.scope import LeadSample
from streamscore.scoring.rules import load_rules
from streamscore.scoring.state import LeadState
from streamscore.store.keys import KeySpace
from streamscore.store.namespaces import (
    Namespace,
    replay_namespace,
    scan_leads,
    shadow_namespace,
)
from streamscore.store.store import RedisStore
from tests.conftest import RULES_FILE, run_cli
from tests.integration.faults_support import (
    HOUR_MS,
    QUIET,
    REPLAY_WAIT,
    Sent,
    assert_states_match,
    high_watermarks,
    make_traffic,
    messages_for,
    outcomes_for,
    reference,
    wait_applied,
)
from tests.integration.harness import (
    WorkerProcess,
    bounded,
    produce_positions,
    read_topic,
)
from tests.integration.test_models import candidate_rules, expected_ids


def time_of(s: Sent) -> int:
    """The event time of a produced message, as the worker parses it."""
    ev = parse_event(s.raw, TOPIC_BY_TYPE[EventType(s.type)], int(time.time() * 1000), Limits())
    return ev.time_ms


def recorder(seen: list[tuple[int, int]]) -> Callable[[int, int], None]:
    """A progress callback that keeps every (done, total) it is given."""
    return lambda done, total: seen.append((done, total))


def namespace_store(store: RedisStore, namespace: Namespace) -> RedisStore:
    """A store over another namespace of the same Redis."""
    return RedisStore(store.client, KeySpace(namespace.prefix, store.keys.groups))


async def states_of(store: RedisStore, namespace: Namespace) -> dict[str, LeadState]:
    """The namespace's lead states by id, each handoff's model name (the namespace's) blanked."""
    states = {s.lead_id: s async for s in scan_leads(store.client, namespace)}
    for state in states.values():
        if state.funnel:  # funnel wire form: [handoffs, ...], a handoff's model at index 2
            state.funnel[0] = [[*h[:2], "*", *h[3:]] for h in state.funnel[0]]
    return states


async def dump_keys(store: RedisStore, prefix: str, leave_out: tuple[str, ...]) -> dict[bytes, Any]:
    """DUMP of every key under `prefix` except those under the given sub-prefixes."""
    dumped: dict[bytes, Any] = {}
    async for key in store.client.scan_iter(match=f"{prefix}:*", count=1000):
        if not key.decode().startswith(leave_out):
            dumped[key] = await store.client.execute("DUMP", key, key=key)
    return dumped


async def handoffs_on(settings: Settings, topic: str) -> dict[str, dict[str, Any]]:
    """A topic's handoffs by id, without what differs between runs (emit time, model name)."""
    found = await read_topic(settings, topic, timeout_s=10)
    return {
        m["handoff_id"]: {k: v for k, v in m.items() if k not in ("scored_at", "model")}
        for m in found
    }


async def score_live(
    settings: Settings, store: RedisStore, workers: list[WorkerProcess], tmp_path: Path,
    messages: list[tuple[str, bytes, bytes]],
) -> None:  # fmt: skip
    """Produce the messages and let a live worker apply them all, then stop it."""
    landed = await produce_positions(settings, messages)
    worker = WorkerProcess(settings, tmp_path, name="live")
    workers.append(worker)
    await worker.wait_ready()
    await wait_applied(store, high_watermarks(landed), worker, timeout_s=120)
    if settings.shadow_rules_file is not None:
        shadow = namespace_store(
            store, shadow_namespace(settings.redis_key_prefix, settings.shadow_model)
        )
        await wait_applied(shadow, high_watermarks(landed), worker, timeout_s=60)
    assert worker.terminate() == 0, worker.log()


@bounded(300)
async def test_a_replay_scores_history_as_the_candidate_would_and_leaves_live_alone(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
) -> None:
    rng = random.Random(1313)
    cand_path = candidate_rules(tmp_path)
    cand_rules = load_rules(cand_path)
    live = settings_factory(
        shadow_rules_file=cand_path, shadow_model=f"c{unique}", **QUIET, **REPLAY_WAIT
    )
    now = int(time.time() * 1000)
    sent = make_traffic(rng, unique, 100, 2000, now - 6 * HOUR_MS, now - 60_000)
    await score_live(live, store, workers, tmp_path, messages_for(live, sent))
    prefix = live.redis_key_prefix
    before = await dump_keys(store, prefix, (f"{prefix}:r:",))
    assert before

    # Two replays of the same history under the candidate, with default settings.
    settings = settings_factory(**QUIET)
    runs = []
    for name in (f"a-{unique}", f"b-{unique}"):
        request = ReplayRequest(name=name, rules_file=cand_path, emit=True)
        progress: list[tuple[int, int]] = []
        result = await run_replay(settings, request, recorder(progress))
        assert (result.records, result.scored, result.skipped) == (len(sent), len(sent), 0)
        assert result.rules_version == "candidate-1"
        assert progress[-1] == (len(sent), len(sent))
        assert all(d <= t for d, t in progress)
        runs.append(result)

    leads = {s.lead_id for s in sent}
    cand_ref = reference(sent, settings.dedup_window_s, cand_rules)
    a, b = (r.namespace for r in runs)
    # The replay holds what the candidate makes of the history, exactly.
    await assert_states_match(namespace_store(store, a), cand_ref, leads, cand_rules)
    # Deterministic: the second replay holds the same states, byte for byte once decoded.
    states_a, states_b = await states_of(store, a), await states_of(store, b)
    assert set(states_a) == leads
    assert states_a == states_b
    expected = expected_ids(cand_ref, "handoff")
    sent_a = await handoffs_on(settings, replay_topics(a.name)["topic_handoffs"])
    sent_b = await handoffs_on(settings, replay_topics(b.name)["topic_handoffs"])
    assert set(sent_a) == expected
    assert sent_a == sent_b
    # The shadow lane, scoring live with the same rules, holds what a replay makes of them.
    shadow = shadow_namespace(prefix, f"c{unique}")
    await assert_states_match(namespace_store(store, shadow), cand_ref, leads, cand_rules)
    assert await states_of(store, shadow) == states_a
    shadow_sent = await handoffs_on(settings, f"ss.v1.shadow.c{unique}.handoffs")
    assert set(shadow_sent) == expected
    # Live (and its shadow lane) untouched, byte for byte.
    assert await dump_keys(store, prefix, (f"{prefix}:r:",)) == before
    # The replay's record says what it was.
    meta = await read_meta(store.client, a)
    assert meta is not None
    assert meta["status"] == "done"
    assert meta["rules_version"] == "candidate-1"
    assert meta["rules_text"] == cand_path.read_text(encoding="utf-8")
    assert meta["records"] == len(sent)


@bounded(300)
async def test_a_window_and_a_sample_of_leads_replay_only_their_events(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
) -> None:
    rng = random.Random(2626)
    rules = load_rules(RULES_FILE)
    settings = settings_factory(**QUIET, **REPLAY_WAIT)
    now = int(time.time() * 1000)
    sent = make_traffic(rng, unique, 80, 1500, now - 6 * HOUR_MS, now - 60_000)
    await score_live(settings, store, workers, tmp_path, messages_for(settings, sent))
    times = sorted(time_of(s) for s in sent)
    since, until = times[len(times) // 4], times[3 * len(times) // 4]

    windowed = await run_replay(
        settings, ReplayRequest(name=f"w-{unique}", rules_file=RULES_FILE, from_ms=since,
                                until_ms=until)
    )  # fmt: skip
    inside = [s for s in sent if since <= time_of(s) <= until]
    assert (windowed.scored, windowed.skipped) == (len(inside), len(sent) - len(inside))
    in_ref = reference(inside, settings.dedup_window_s, rules)
    in_leads = {s.lead_id for s in inside}
    assert set(await states_of(store, windowed.namespace)) == in_leads
    await assert_states_match(namespace_store(store, windowed.namespace), in_ref, in_leads, rules)

    sample = LeadSample(fraction=0.3)
    sampled = await run_replay(
        settings, ReplayRequest(name=f"s-{unique}", rules_file=RULES_FILE, leads=sample)
    )
    chosen = {s.lead_id for s in sent if sample.admits(s.lead_id)}
    assert 0 < len(chosen) < len({s.lead_id for s in sent})
    of_chosen = [s for s in sent if s.lead_id in chosen]
    assert sampled.scored == len(of_chosen)
    sample_states = await states_of(store, sampled.namespace)
    assert set(sample_states) == chosen
    # A sampled lead is scored exactly as in the full history: leads do not interact.
    full_ref = reference(sent, settings.dedup_window_s, rules)
    await assert_states_match(namespace_store(store, sampled.namespace), full_ref, chosen, rules)

    # A name in use is refused with a way out; --overwrite replaces it.
    again = ReplayRequest(name=f"s-{unique}", rules_file=RULES_FILE, leads=sample)
    with pytest.raises(StreamscoreError, match="--overwrite"):
        await run_replay(settings, again)
    redone = await run_replay(
        settings, ReplayRequest(name=f"s-{unique}", rules_file=RULES_FILE, overwrite=True)
    )
    assert set(await states_of(store, redone.namespace)) == {s.lead_id for s in sent}


@bounded(360)
async def test_outcomes_replay_too_and_the_cli_runs_the_loop(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
) -> None:
    rng = random.Random(3939)
    rules = load_rules(RULES_FILE)
    settings = settings_factory(**QUIET, **REPLAY_WAIT)
    now = int(time.time() * 1000)
    sent = make_traffic(rng, unique, 120, 2500, now - 8 * HOUR_MS, now - 2 * HOUR_MS)
    ref = reference(sent, settings.dedup_window_s, rules)
    outcomes = outcomes_for(rng, ref, 0.6, unique)
    assert outcomes
    messages = messages_for(settings, sent) + [
        (settings.topic_outcomes, lead.encode(), raw) for lead, raw in outcomes
    ]
    await score_live(settings, store, workers, tmp_path, messages)
    live_counters = await store.kpi_counters()
    assert any(f.split(SEP)[2] == "handoffs" for f in live_counters)

    env = settings_env(settings)
    name = f"same-{unique}"
    done = run_cli("replay", "--rules", str(RULES_FILE), "--name", name, "--quiet", env=env)
    assert done.returncode == 0, done.stderr
    assert f"replay:{name}: {len(messages):,} records" in done.stdout
    assert f"next: streamscore diff live replay:{name}" in done.stdout
    # The same rules over the same history: the same KPIs, under the replay's model name.
    replayed = await namespace_store(
        store, replay_namespace(settings.redis_key_prefix, name)
    ).kpi_counters()

    def by_metric(counters: dict[str, int]) -> dict[tuple[str, ...], int]:
        return {tuple(f.split(SEP)[1:]): n for f, n in counters.items() if not f.startswith("*")}

    assert by_metric(replayed) == by_metric(live_counters)

    refused = run_cli("replay", "--rules", str(RULES_FILE), "--name", name, "--quiet", env=env)
    assert refused.returncode != 0
    assert "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr

    cand_path = candidate_rules(tmp_path)
    cand = f"cand-{unique}"
    done = run_cli("replay", "--rules", str(cand_path), "--name", cand, "--quiet", env=env)
    assert done.returncode == 0, done.stderr
    html = tmp_path / "diff.html"
    diff = run_cli("diff", "live", f"replay:{cand}", "--html", str(html), env=env)
    assert diff.returncode == 0, diff.stderr
    assert f"candidate: replay:{cand} candidate-1" in diff.stdout
    cand_ref = reference(sent, settings.dedup_window_s, load_rules(cand_path))

    def handed(r: Any) -> set[str]:
        return {o.lead_id for o in r.outputs.values() if o.kind == "handoff"}

    assert f"Handoffs that appear: {len(handed(cand_ref) - handed(ref))}" in diff.stdout
    assert f"Handoffs that disappear: {len(handed(ref) - handed(cand_ref))}" in diff.stdout
    assert "Against the outcomes" in diff.stdout  # the replayed outcomes, joined
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    snap = tmp_path / "cand.jsonl"
    done = run_cli("snapshot", f"replay:{cand}", "--out", str(snap), env=env)
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in snap.read_text(encoding="utf-8").splitlines()]
    assert len(lines) >= len({s.lead_id for s in sent})
