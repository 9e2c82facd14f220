"""The account states this worker owns, cached like leads (runtime/leads.py) and written back
in the same commit call as the lead states and offsets of their key group, fenced the same way
on the value prefix they were read with."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from streamscore.scoring.accounts import AccountState
from streamscore.store.codec import decode_account
from streamscore.store.commit import prefix_of, split_value
from streamscore.store.keys import KeySpace
from streamscore.store.store import RedisStore

RedisCall = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


@dataclass(slots=True)
class CachedAccount:
    """An account's state and the value prefix the next commit expects Redis to hold."""

    key: str
    group: int
    state: AccountState
    version: int
    prefix: bytes


class AccountCache:
    """Account states by key, least recently used first; bounded to `max_accounts`."""

    def __init__(self, keys: KeySpace, store: RedisStore, max_accounts: int) -> None:
        self._keys = keys
        self._store = store
        self._max = max_accounts
        self._accounts: OrderedDict[str, CachedAccount] = OrderedDict()

    def __len__(self) -> int:
        return len(self._accounts)

    def ref(self, account_id: str) -> tuple[int, str]:
        """(group, key) of an account id."""
        ref = self._keys.account_ref(account_id)
        return ref.group, self._keys.account(ref)

    def get(self, key: str) -> CachedAccount:
        """A loaded account (KeyError if it is not cached: call load() first)."""
        account = self._accounts[key]
        self._accounts.move_to_end(key)
        return account

    async def load(self, refs: Iterable[tuple[int, str, str]], redis: RedisCall) -> None:
        """Make sure every (group, key, account id) is cached: one MGET per group of misses."""
        missing: dict[int, list[tuple[str, str]]] = {}
        for group, key, account_id in refs:
            if key in self._accounts:
                self._accounts.move_to_end(key)
            else:
                missing.setdefault(group, []).append((key, account_id))
        for group, wanted in missing.items():
            values = await redis(partial(self._store.load_values, [key for key, _ in wanted]))
            for (key, account_id), raw in zip(wanted, values, strict=True):
                if key in self._accounts:
                    continue
                if raw is None:
                    cached = CachedAccount(key, group, AccountState(account_id), 0, b"")
                else:
                    version, body = split_value(raw)
                    state = decode_account(body)
                    cached = CachedAccount(key, group, state, version, prefix_of(raw))
                self._accounts[key] = cached
        while len(self._accounts) > self._max:
            self._accounts.popitem(last=False)

    def clear(self) -> None:
        """Forget every account (after a conflict or a rebalance: Redis is the truth)."""
        self._accounts.clear()
