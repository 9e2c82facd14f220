"""Lanes: the namespaces of lead state one worker scores in the same pass over the events.

The live lane holds the leads sales works from: its handoffs go to the handoff topic. Its
model is the live rules, or, during an A/B experiment, the rules of each lead's arm (assigned by
a stable hash of the lead id, lab/ab.py). A shadow lane scores the same events under candidate
rules in a namespace of its own (its own key prefix, its own output topics, never sales'), so
that its KPIs can be compared with live ones: one fetch, one decision per lane, one commit call
per lane and key group. Every KPI counter carries the model's name.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

from streamscore.config import Settings
from streamscore.lab.ab import Experiment, assign_arm, load_experiment
from streamscore.runtime.leads import LeadCache
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.sensors import Sensor
from streamscore.scoring.rules import CompiledRules
from streamscore.store.keys import KeySpace
from streamscore.store.namespaces import shadow_namespace
from streamscore.store.store import RedisStore

#: The KPI model name of the live rules when no experiment splits them.
LIVE = "live"


class OutputTopics(NamedTuple):
    """Where a lane's outputs go."""

    handoffs: str
    tier_changes: str
    sla_breaches: str


class Model(NamedTuple):
    """What scores one lead: the model's name (a KPI and metric label) and its rules."""

    name: str
    rules: CompiledRules
    #: Cross-lead effects (identity merges, account roll-ups) apply: the live lane of a live
    #: worker only; a shadow model or a replay scores each id on its own.
    cross_lead: bool = True


@dataclass
class Lane:
    """One namespace of lead state, its cache, its applied offsets and its model(s)."""

    name: str
    keys: KeySpace
    store: RedisStore
    cache: LeadCache
    #: None: the lane's outputs are recorded and dropped (a replay without output topics).
    topics: OutputTopics | None
    #: Model name -> its rules (one entry, or one per A/B arm).
    holders: dict[str, RulesHolder]
    experiment: Experiment | None = None
    #: Identity merges and account roll-ups apply in this lane (see Model.cross_lead).
    cross_lead: bool = True
    #: (key group, "topic:partition") -> the last offset applied in this namespace, as Redis
    #: will hold it once the calls already packed have landed.
    recorded: dict[tuple[int, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._arm = functools.lru_cache(maxsize=65_536)(self._assign)

    @property
    def shadow(self) -> bool:
        """Scores for comparison only: nothing it emits goes to sales."""
        return self.name != LIVE

    def model_for(self, lead_id: str) -> Model:
        """The model that scores `lead_id` in this lane (its arm's, during an experiment)."""
        name = self._arm(lead_id) if self.experiment is not None else next(iter(self.holders))
        return Model(name, self.holders[name].rules, self.cross_lead)

    def _assign(self, lead_id: str) -> str:
        assert self.experiment is not None
        return assign_arm(self.experiment, lead_id)

    @property
    def models(self) -> list[Model]:
        """Every model of the lane, with its rules in force."""
        return [Model(name, holder.rules, self.cross_lead) for name, holder in self.holders.items()]

    def reload_rules(self) -> None:
        """Re-read every rules file of the lane that changed on disk."""
        for holder in self.holders.values():
            holder.reload_if_changed()


def build_lanes(
    settings: Settings,
    sensor: Sensor,
    live_rules: RulesHolder,
    store: RedisStore,
    *,
    emit: bool = True,
    model: str = LIVE,
    cross_lead: bool = True,
) -> list[Lane]:
    """The live lane (split into A/B arms when an experiment is set), then any shadow lane.

    `emit=False` (a replay without output topics): outputs are not sent anywhere. `model`
    names the live lane's rules in KPIs and funnels (a replay's name, in a replay).
    """
    dedup = settings.dedup_window_s
    holders = {model: live_rules}
    experiment = None
    if settings.ab_experiment_file is not None:
        experiment = load_experiment(settings.ab_experiment_file)
        holders = {
            arm.name: RulesHolder(arm.rules, sensor, dedup, primary=False)
            for arm in experiment.arms
        }
    live = Lane(
        LIVE,
        store.keys,
        store,
        LeadCache(store.keys, store, settings.lead_cache_max),
        OutputTopics(
            settings.topic_handoffs, settings.topic_tier_changes, settings.topic_sla_breaches
        )
        if emit
        else None,
        holders,
        experiment,
        cross_lead,
    )
    lanes = [live]
    if settings.shadow_rules_file is not None:
        name = settings.shadow_model
        # A lead forgotten live is forgotten in every model: the lanes share live's sets.
        keys = KeySpace(
            shadow_namespace(settings.redis_key_prefix, name).prefix,
            settings.redis_key_groups,
            store.keys.forgotten_prefix or store.keys.prefix,
        )
        shadow_store = RedisStore(store.client, keys)
        lanes.append(
            Lane(
                name,
                keys,
                shadow_store,
                LeadCache(keys, shadow_store, settings.lead_cache_max),
                shadow_topics(settings),
                {name: RulesHolder(settings.shadow_rules_file, sensor, dedup, primary=False)},
                cross_lead=False,
            )
        )
    return lanes


def shadow_topics(settings: Settings) -> OutputTopics:
    """The output topics of the shadow model (never read by sales)."""
    base = f"ss.v1.shadow.{settings.shadow_model}"
    return OutputTopics(f"{base}.handoffs", f"{base}.tier-changes", f"{base}.sla-breaches")
