"""Where the lab's commands read from: a namespace in Redis (live, a replay, a shadow) or a file.

The CLI glue beside commands.py (the rest of the lab is pure). A namespace's leads are judged
under the rules that scored them: the live rules file (each lead's arm's rules during an A/B
experiment), the shadow rules file, or the rules text a replay recorded when it ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamscore.config import Settings
from streamscore.errors import StreamscoreError
from streamscore.lab.ab import assign_arm, load_experiment
from streamscore.lab.diff import LeadOutcome, LeadSnapshot, Snapshot
from streamscore.lab.examples import Example
from streamscore.lab.files import read_snapshot
from streamscore.lab.snapshots import ExampleCount, examples_of, lead_outcome, lead_snapshot
from streamscore.runtime.replay import read_meta
from streamscore.scoring.rules import CompiledRules, load_rules, parse_rules_text
from streamscore.store.client import RedisClient
from streamscore.store.namespaces import Namespace, parse_namespace, scan_leads


@dataclass(frozen=True, slots=True)
class NamespaceModel:
    """The rules a namespace's leads were scored by."""

    namespace: Namespace
    version: str
    tiers: tuple[str, ...]
    rules_of: Callable[[str], CompiledRules]  # lead id -> its rules


def is_file(spec: str) -> bool:
    """A snapshot file rather than a namespace."""
    return spec.endswith(".jsonl") or "/" in spec


async def namespace_model(
    client: RedisClient, settings: Settings, namespace: Namespace
) -> NamespaceModel:
    """The rules of a namespace, as they scored it."""
    if namespace.kind == "replay":
        meta = await read_meta(client, namespace)
        if meta is None:
            raise StreamscoreError(
                f"{namespace.spec}: no such replay (run streamscore replay --name "
                f"{namespace.name} first)"
            )
        if meta.get("status") != "done":
            raise StreamscoreError(
                f"{namespace.spec} did not finish (started {meta.get('started_at')}): run it "
                "again with --overwrite"
            )
        rules = parse_rules_text(meta["rules_text"], f"{namespace.spec} ({meta['rules_file']})")
        return _single(namespace, rules)
    if namespace.kind == "shadow":
        if settings.shadow_rules_file is None or namespace.name != settings.shadow_model:
            raise StreamscoreError(
                f"{namespace.spec}: the settings name no such shadow model (shadow_model "
                f"{settings.shadow_model!r}, shadow_rules_file {settings.shadow_rules_file})"
            )
        return _single(namespace, load_rules(settings.shadow_rules_file))
    if settings.ab_experiment_file is not None:
        experiment = load_experiment(settings.ab_experiment_file)
        arms = {arm.name: load_rules(arm.rules) for arm in experiment.arms}
        first = next(iter(arms.values()))
        return NamespaceModel(
            namespace,
            " / ".join(f"{name} {rules.version}" for name, rules in arms.items()),
            tuple(t.name for t in first.tiers),
            lambda lead_id: arms[assign_arm(experiment, lead_id)],
        )
    return _single(namespace, load_rules(settings.rules_file))


def _single(namespace: Namespace, rules: CompiledRules) -> NamespaceModel:
    return NamespaceModel(
        namespace, rules.version, tuple(t.name for t in rules.tiers), lambda _lead_id: rules
    )


async def read_namespace(
    client: RedisClient, settings: Settings, spec: str, at_ms: int
) -> tuple[Snapshot, dict[str, LeadOutcome]]:
    """A namespace's snapshot judged at `at_ms`, and the outcomes its funnels hold."""
    namespace = parse_namespace(spec, settings.redis_key_prefix)
    model = await namespace_model(client, settings, namespace)
    leads: dict[str, LeadSnapshot] = {}
    outcomes: dict[str, LeadOutcome] = {}
    async for state in scan_leads(client, namespace):
        leads[state.lead_id] = lead_snapshot(state, model.rules_of(state.lead_id), at_ms)
        outcome = lead_outcome(state)
        if outcome is not None:
            outcomes[state.lead_id] = outcome
    return Snapshot(namespace.spec, model.version, model.tiers, leads), outcomes


async def read_source(
    client: RedisClient | None, settings: Settings | None, spec: str, at_ms: int
) -> tuple[Snapshot, dict[str, LeadOutcome]]:
    """A snapshot file (no outcomes with it), or a namespace's snapshot and outcomes."""
    if is_file(spec):
        return read_snapshot(Path(spec)), {}
    assert client is not None and settings is not None
    return await read_namespace(client, settings, spec, at_ms)


async def read_examples(
    client: RedisClient,
    settings: Settings,
    spec: str,
    rules: CompiledRules,
    mature_before_ms: int | None,
) -> tuple[list[Example], ExampleCount]:
    """Learning examples of every handoff a namespace made under `rules`."""
    namespace = parse_namespace(spec, settings.redis_key_prefix)
    examples: list[Example] = []
    handoffs = other = recent = 0
    async for state in scan_leads(client, namespace):
        found, count = examples_of(state, rules, mature_before_ms)
        examples += found
        handoffs += count.handoffs
        other += count.other_rules
        recent += count.too_recent
    examples.sort(key=lambda e: e.lead_id)  # SCAN's order varies; the split's seed must not
    return examples, ExampleCount(handoffs, other, recent)
