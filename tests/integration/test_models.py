"""Models side by side in one worker: a shadow model scored in the same pass as the live one, and
an A/B experiment that splits the leads between two rules files by a stable hash."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamscore.config import Settings
from streamscore.lab.ab import assign_arm, load_experiment
from streamscore.scoring.rules import CompiledRules, load_rules
from streamscore.store.client import open_client
from streamscore.store.keys import KeySpace
from streamscore.store.store import RedisStore
from tests.conftest import RULES_FILE
from tests.integration.faults_support import (
    HOUR_MS,
    QUIET,
    Reference,
    assert_states_match,
    high_watermarks,
    make_traffic,
    messages_for,
    reference,
    wait_applied,
)
from tests.integration.harness import (
    WorkerProcess,
    bounded,
    metric_total,
    produce_positions,
    read_topic,
    wait_for,
)


def candidate_rules(tmp_path: Path) -> Path:
    """The example rules with pricing and demo pages worth more and a lower bar for hot."""
    text = RULES_FILE.read_text(encoding="utf-8")
    text = text.replace('version: "b2b-2026.11.1"', 'version: "candidate-1"')
    pricing = (
        "  - id: pricing_page\n    when: {type: page_view, properties.path: {prefix: /pricing}}\n"
    )
    text = text.replace(pricing + "    points: 10", pricing + "    points: 18")
    text = text.replace("    enter: 90\n    exit: 70", "    enter: 75\n    exit: 60")
    text = text.replace("  rearm_below: 50", "  rearm_below: 45")
    path = tmp_path / "candidate.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_rules(path).version == "candidate-1"
    return path


async def outputs_on(settings: Settings, topic: str) -> dict[str, dict[str, Any]]:
    """Messages of an output topic by id (handoff_id or change_id)."""
    found = await read_topic(settings, topic, timeout_s=10)
    return {m.get("handoff_id") or m["change_id"]: m for m in found}


def expected_ids(ref: Reference, kind: str) -> set[str]:
    return {oid for oid, out in ref.outputs.items() if out.kind == kind}


@bounded(240)
async def test_a_shadow_model_scores_beside_the_live_one_as_if_run_alone(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
) -> None:
    rng = random.Random(77)
    live_rules = load_rules(RULES_FILE)
    cand_path = candidate_rules(tmp_path)
    cand_rules = load_rules(cand_path)
    # A model name of this test's own: shadow topics are named by the model, not the test.
    model = f"c{unique}"
    settings = settings_factory(shadow_rules_file=cand_path, shadow_model=model, **QUIET)
    now = int(time.time() * 1000)
    sent = make_traffic(rng, unique, 120, 2500, now - 4 * HOUR_MS, now - 60_000)
    landed = await produce_positions(settings, messages_for(settings, sent))
    worker = WorkerProcess(settings, tmp_path, name="shadow")
    workers.append(worker)
    await worker.wait_ready()
    await wait_applied(store, high_watermarks(landed), worker, timeout_s=120)
    shadow_store = RedisStore(
        await open_client(settings.redis_url.get_secret_value(), cluster=False),
        KeySpace(f"{settings.redis_key_prefix}:m:{model}"),
    )
    try:
        await wait_applied(shadow_store, high_watermarks(landed), worker, timeout_s=60)
        leads = {s.lead_id for s in sent}
        live_ref = reference(sent, settings.dedup_window_s, live_rules)
        cand_ref = reference(sent, settings.dedup_window_s, cand_rules)
        # Each namespace holds what its own rules make of the stream, alone.
        await assert_states_match(store, live_ref, leads, live_rules)
        await assert_states_match(shadow_store, cand_ref, leads, cand_rules)
        shadow_topic = f"ss.v1.shadow.{model}.handoffs"
        shadow_settings = settings.model_copy(update={"topic_handoffs": shadow_topic})

        async def all_sent() -> bool:
            live = await outputs_on(settings, settings.topic_handoffs)
            shadow = await outputs_on(shadow_settings, shadow_topic)
            return set(live) == expected_ids(live_ref, "handoff") and set(shadow) == (
                expected_ids(cand_ref, "handoff")
            )

        assert await wait_for(all_sent, 60), worker.log()
        # The candidate hands off more leads, and none of its handoffs reach sales' topic.
        assert expected_ids(cand_ref, "handoff") - expected_ids(live_ref, "handoff")
        live_sent = await outputs_on(settings, settings.topic_handoffs)
        assert {m["rules_version"] for m in live_sent.values()} == {live_rules.version}
        # KPIs and metrics keep the models apart by name.
        counters = await shadow_store.kpi_counters()
        assert all(k.startswith(f"{model}|candidate-1|") or k.startswith("*|") for k in counters)
        _, body = worker.get("/metrics")
        text = body.decode()
        live_n = len(expected_ids(live_ref, "handoff"))
        cand_n = len(expected_ids(cand_ref, "handoff"))
        assert metric_total(text, "streamscore_handoffs_total", model="live") == live_n
        assert metric_total(text, "streamscore_handoffs_total", model=model) == cand_n
        # A batch is counted once in the batch-size histogram, however many lanes commit it.
        applied = sum(
            metric_total(text, "streamscore_events_total", outcome=outcome)
            for outcome in ("scored", "duplicate")
        )
        assert metric_total(text, "streamscore_batch_events_sum") == applied == len(sent)
    finally:
        await shadow_store.close()
    assert worker.terminate() == 0, worker.log()


@bounded(240)
async def test_an_ab_experiment_scores_each_lead_by_its_arm(
    settings_factory: Callable[..., Settings],
    store: RedisStore,
    workers: list[WorkerProcess],
    tmp_path: Path,
    unique: str,
) -> None:
    rng = random.Random(99)
    cand_path = candidate_rules(tmp_path)
    experiment_path = tmp_path / "experiment.yaml"
    experiment_path.write_text(
        f"experiment: pricing-weight-{unique}\n"
        f"arms:\n"
        f"  control: {{rules: {RULES_FILE}, weight: 1}}\n"
        f"  heavier: {{rules: {cand_path.name}, weight: 1}}\n",
        encoding="utf-8",
    )
    experiment = load_experiment(experiment_path)
    rules_of: dict[str, CompiledRules] = {
        arm.name: load_rules(arm.rules) for arm in experiment.arms
    }
    settings = settings_factory(ab_experiment_file=experiment_path, **QUIET)
    now = int(time.time() * 1000)
    sent = make_traffic(rng, unique, 160, 3000, now - 4 * HOUR_MS, now - 60_000)
    landed = await produce_positions(settings, messages_for(settings, sent))
    worker = WorkerProcess(settings, tmp_path, name="ab")
    workers.append(worker)
    await worker.wait_ready()
    await wait_applied(store, high_watermarks(landed), worker, timeout_s=120)

    arm_of = {s.lead_id: assign_arm(experiment, s.lead_id) for s in sent}
    assert set(arm_of.values()) == {"control", "heavier"}  # both arms have leads
    expected_handoffs: set[str] = set()
    for arm, rules in rules_of.items():
        mine = [s for s in sent if arm_of[s.lead_id] == arm]
        ref = reference(mine, settings.dedup_window_s, rules)
        await assert_states_match(store, ref, {s.lead_id for s in mine}, rules)
        expected_handoffs |= expected_ids(ref, "handoff")

    async def all_sent() -> bool:
        return set(await outputs_on(settings, settings.topic_handoffs)) == expected_handoffs

    assert await wait_for(all_sent, 60), worker.log()
    # Every arm's handoffs went to sales, each stamped with its arm's rules version.
    sent_now = await outputs_on(settings, settings.topic_handoffs)
    for message in sent_now.values():
        arm = arm_of[message["lead_id"]]
        assert message["rules_version"] == rules_of[arm].version
    counters = await store.kpi_counters()
    by_arm = {
        arm: sum(v for k, v in counters.items() if k.startswith(f"{arm}|")) for arm in rules_of
    }
    assert all(n > 0 for n in by_arm.values()), by_arm
    assert worker.terminate() == 0, worker.log()
