"""The lead states of the partitions this worker owns, cached in memory and loaded on a miss.

The worker applies events to these states in Python and writes the changed ones back with one
commit call per key group and batch ("write-behind", as Kafka Streams keeps local state with a
changelog). Each entry remembers the value prefix Redis holds for it once the commits already
sent have landed: the next commit is fenced on it, so a lead written by anyone else meanwhile
turns that commit into a conflict instead of a lost update.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from streamscore.outcomes.funnel import from_wire, next_sla_due_ms
from streamscore.scoring.rules import CompiledRules
from streamscore.scoring.state import LeadState, due_ms, new_lead, score_at
from streamscore.store.codec import decode_lead
from streamscore.store.commit import prefix_of, split_value
from streamscore.store.keys import KeySpace
from streamscore.store.store import RedisStore

RedisCall = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


@dataclass(slots=True)
class CachedLead:
    """A lead's state and what this worker last wrote (or read) of it in Redis."""

    key: str
    group: int
    state: LeadState
    version: int  # write version of the newest value produced or loaded
    prefix: bytes  # the value prefix the next commit expects Redis to hold
    #: The sorted sets of its key group the lead is in, with its score in each, as last written;
    #: None when loaded from Redis (the next write then removes it from every set it could be
    #: in and adds it where it belongs).
    sets: dict[str, float] | None

    def set_changes(
        self, want: dict[str, float], could_be_in: Iterable[str]
    ) -> tuple[tuple[tuple[str, float], ...], tuple[str, ...]]:
        """(additions, removals) that take the lead from the sets it is in to `want`."""
        have = self.sets
        if have is None:
            adds = tuple(want.items())
            removes = tuple(k for k in could_be_in if k not in want)
        else:
            adds = tuple((k, v) for k, v in want.items() if have.get(k) != v)
            removes = tuple(k for k in have if k not in want)
        self.sets = want
        return adds, removes


class LeadCache:
    """Lead states by key, least recently used first; bounded to `max_leads`."""

    def __init__(self, keys: KeySpace, store: RedisStore, max_leads: int) -> None:
        self._keys = keys
        self._store = store
        self._max = max_leads
        self._leads: OrderedDict[str, CachedLead] = OrderedDict()
        self._key_of: dict[str, tuple[int, str]] = {}

    def __len__(self) -> int:
        return len(self._leads)

    def __contains__(self, key: object) -> bool:
        return key in self._leads

    def ref(self, lead_id: str) -> tuple[int, str]:
        """(group, key) of a lead id."""
        ref = self._key_of.get(lead_id)
        if ref is None:
            lead_ref = self._keys.lead_ref(lead_id)
            ref = (lead_ref.group, self._keys.lead(lead_ref))
            if len(self._key_of) > 4 * self._max:
                self._key_of.clear()  # only a memo: bound it with the cache
            self._key_of[lead_id] = ref
        return ref

    def get(self, key: str) -> CachedLead:
        """A loaded lead (KeyError if it is not cached: call load() first)."""
        lead = self._leads[key]
        self._leads.move_to_end(key)
        return lead

    async def load(self, refs: Iterable[tuple[int, str, str | None]], redis: RedisCall) -> None:
        """Make sure every (group, key, lead id or None) is cached: one MGET per group of misses.

        A key with no value becomes a new lead (its id must then be given).
        """
        missing: dict[int, list[tuple[str, str | None]]] = {}
        for group, key, lead_id in refs:
            if key in self._leads:
                self._leads.move_to_end(key)
            else:
                missing.setdefault(group, []).append((key, lead_id))
        for group, wanted in missing.items():
            keys = [key for key, _ in wanted]
            values = await redis(partial(self._store.load_values, keys))
            for (key, lead_id), raw in zip(wanted, values, strict=True):
                if key in self._leads:  # listed twice
                    continue
                if raw is None and lead_id is None:
                    continue  # a due key deleted (forgotten) since it was read: nothing to load
                self._leads[key] = self._cached(key, group, raw, lead_id)
        self._trim()

    def _cached(self, key: str, group: int, raw: bytes | None, lead_id: str | None) -> CachedLead:
        if raw is None:
            if lead_id is None:
                raise KeyError(f"{key} has no stored value and no lead id to start one")
            return CachedLead(key, group, new_lead(lead_id), 0, b"", {})
        version, body = split_value(raw)
        return CachedLead(key, group, decode_lead(body, lead_id), version, prefix_of(raw), None)

    def _trim(self) -> None:
        # Evicts least recently used leads only: the batch being decided touched its own leads
        # last, so they are never the ones dropped (the configured size is checked against the
        # batch size at start).
        while len(self._leads) > self._max:
            self._leads.popitem(last=False)

    def evict_partitions(self, partitions: set[int]) -> None:
        """Forget the leads of partitions this worker no longer owns."""
        gone = [k for k, lead in self._leads.items() if lead.state.partition in partitions]
        for key in gone:
            del self._leads[key]

    def clear(self) -> None:
        """Forget every lead (after a conflict: Redis is the truth)."""
        self._leads.clear()


def sorted_sets_of(
    state: LeadState, group: int, keys: KeySpace, rules: CompiledRules
) -> dict[str, float]:
    """The sorted sets of its group a lead belongs in, with its score in each.

    Its partition's due set while an inactivity drop is ahead of it (scored by the drop's
    time), its partition's SLA set while a first-touch deadline is ahead of it, and the index
    of its tier above the first (scored by its score at its present), which the console's
    queue reads; the first tier, where most leads are, is not indexed.
    """
    sets: dict[str, float] = {}
    partition = state.partition
    if partition is not None:
        due = due_ms(state, rules)
        if due is not None:
            sets[keys.due(group, partition)] = due
        if state.funnel:
            sla = next_sla_due_ms(from_wire(state.funnel), rules.outcomes)
            if sla is not None:
                sets[keys.sla_due(group, partition)] = sla
    if state.tier > 0 and state.last_ms is not None:
        tier = rules.tiers[min(state.tier, len(rules.tiers) - 1)].name
        sets[keys.tier_index(group, tier)] = round(score_at(state, rules, state.last_ms), 6)
    return sets


def sets_a_lead_could_be_in(
    state: LeadState, group: int, keys: KeySpace, rules: CompiledRules
) -> list[str]:
    """Every sorted set a lead loaded from Redis may still be in (its due set, any tier index)."""
    out = [keys.tier_index(group, t.name) for t in rules.tiers[1:]]
    if state.partition is not None:
        out += [keys.due(group, state.partition), keys.sla_due(group, state.partition)]
    return out
