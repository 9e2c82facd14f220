"""The lead states of the partitions this worker owns, cached in memory and loaded on a miss.

The worker applies events to these states in Python and writes the changed ones back with one
commit call per key group and batch ("write-behind", as Kafka Streams keeps local state with a
changelog). Each entry remembers the value prefix Redis holds for it once the commits already
sent have landed: the next commit is fenced on it, so a lead written by anyone else meanwhile
turns that commit into a conflict instead of a lost update.

Entries are found by lead id (the hot path: one dict lookup an event) and by key (the decay
tick, which reads keys from the due sets). Recency is a batch stamp rather than an LRU list: a
move-to-end on every event cost more than the rest of the bookkeeping; when the cache outgrows
its bound, the entries of the oldest batches go, a tenth of the bound at a time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from streamscore.outcomes.funnel import from_wire, next_sla_due_ms
from streamscore.scoring.rules import CompiledRules
from streamscore.scoring.state import LeadState, due_ms, new_lead, score_at
from streamscore.store.codec import SeenMemo, decode_lead
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
    #: The batch that last touched it (cache recency).
    stamp: int = 0
    #: The seen-ids string last written, extended on the next write (busy leads only).
    seen_memo: SeenMemo | None = None

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
    """Lead states by lead id and by key; bounded to about `max_leads`."""

    def __init__(self, keys: KeySpace, store: RedisStore, max_leads: int) -> None:
        self._keys = keys
        self._store = store
        self._max = max_leads
        #: Lead id -> entry: read once per event by the pipeline.
        self.by_id: dict[str, CachedLead] = {}
        self._by_key: dict[str, CachedLead] = {}
        self._stamp = 0

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def ref(self, lead_id: str) -> tuple[int, str]:
        """(group, key) of a lead id."""
        lead = self.by_id.get(lead_id)
        if lead is not None:
            return lead.group, lead.key
        lead_ref = self._keys.lead_ref(lead_id)
        return lead_ref.group, self._keys.lead(lead_ref)

    def get(self, key: str) -> CachedLead:
        """A loaded lead by key (KeyError if it is not cached: call load_keys() first)."""
        return self._by_key[key]

    async def load(self, lead_ids: Iterable[str], redis: RedisCall) -> None:
        """Make sure every lead id is cached, new leads included: one MGET per group of misses.

        Stamps them all as the newest batch, so a trim never drops a lead of this batch.
        """
        self._stamp = stamp = self._stamp + 1
        by_id = self.by_id
        keys = self._keys
        missing: dict[int, list[tuple[str, str | None]]] = {}
        for lead_id in lead_ids:
            lead = by_id.get(lead_id)
            if lead is not None:
                lead.stamp = stamp
            else:
                lead_ref = keys.lead_ref(lead_id)
                missing.setdefault(lead_ref.group, []).append((keys.lead(lead_ref), lead_id))
        if missing:
            await self._fetch(missing, redis, stamp)

    async def load_keys(self, refs: Iterable[tuple[int, str]], redis: RedisCall) -> None:
        """Make sure every (group, key) of a stored lead is cached (the decay tick's leads)."""
        self._stamp = stamp = self._stamp + 1
        missing: dict[int, list[tuple[str, str | None]]] = {}
        for group, key in refs:
            lead = self._by_key.get(key)
            if lead is not None:
                lead.stamp = stamp
            else:
                missing.setdefault(group, []).append((key, None))
        if missing:
            await self._fetch(missing, redis, stamp)

    async def _fetch(
        self, missing: dict[int, list[tuple[str, str | None]]], redis: RedisCall, stamp: int
    ) -> None:
        for group, wanted in missing.items():
            values = await redis(partial(self._store.load_values, [key for key, _ in wanted]))
            for (key, lead_id), raw in zip(wanted, values, strict=True):
                if key in self._by_key:  # listed twice
                    continue
                if raw is None and lead_id is None:
                    continue  # a due key deleted (forgotten) since it was read: nothing to load
                lead = self._cached(key, group, raw, lead_id)
                lead.stamp = stamp
                self.by_id[lead_id or lead.state.lead_id] = lead
                self._by_key[key] = lead
        if len(self.by_id) > self._max:
            self._trim(stamp)

    def _cached(self, key: str, group: int, raw: bytes | None, lead_id: str | None) -> CachedLead:
        if raw is None:
            if lead_id is None:
                raise KeyError(f"{key} has no stored value and no lead id to start one")
            return CachedLead(key, group, new_lead(lead_id), 0, b"", {})
        version, body = split_value(raw)
        return CachedLead(key, group, decode_lead(body, lead_id), version, prefix_of(raw), None)

    def _trim(self, stamp: int) -> None:
        # Down to 90% of the bound, oldest batches first; never a lead of this batch (the
        # configured size is checked against the batch size at start).
        excess = len(self.by_id) - self._max * 9 // 10
        old = sorted((lead for lead in self.by_id.values() if lead.stamp < stamp), key=_stamp_of)
        for lead in old[:excess]:
            del self.by_id[lead.state.lead_id]
            del self._by_key[lead.key]

    def evict_partitions(self, partitions: set[int]) -> None:
        """Forget the leads of partitions this worker no longer owns."""
        gone = [lead for lead in self.by_id.values() if lead.state.partition in partitions]
        for lead in gone:
            del self.by_id[lead.state.lead_id]
            del self._by_key[lead.key]

    def clear(self) -> None:
        """Forget every lead (after a conflict: Redis is the truth)."""
        self.by_id.clear()
        self._by_key.clear()


def _stamp_of(lead: CachedLead) -> int:
    return lead.stamp


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
