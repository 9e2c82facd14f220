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

from streamscore.scoring.state import LeadState, new_lead
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
    #: (due set key, ms) as last written; ms -1 when loaded (the set may hold it at any time,
    #: so the next write sets or removes it whatever it computes).
    due: tuple[str, int] | None


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
                self._leads[key] = self._cached(key, group, raw, lead_id)
        self._trim()

    def _cached(self, key: str, group: int, raw: bytes | None, lead_id: str | None) -> CachedLead:
        if raw is None:
            if lead_id is None:
                raise KeyError(f"{key} has no stored value and no lead id to start one")
            return CachedLead(key, group, new_lead(lead_id), 0, b"", None)
        version, body = split_value(raw)
        state = decode_lead(body, lead_id)
        partition = state.partition
        due = None if partition is None else (self._keys.due(group, partition), -1)
        return CachedLead(key, group, state, version, prefix_of(raw), due)

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
