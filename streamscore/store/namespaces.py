"""Namespaces of lead state: live, a shadow model's, a replay's. Each is a key prefix of its own.

`live` is the worker's `redis_key_prefix`; a shadow model's state lives under
`<prefix>:m:<model>` and a replay's under `<prefix>:r:<name>`. A name cannot hold a colon and a
lead key's prefix is followed by its `{gN}` hash tag, so no namespace's keys match another's
patterns: a replay never reads or writes a live key.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Final, Literal, NamedTuple

from streamscore.errors import StreamscoreError
from streamscore.scoring.state import LeadState
from streamscore.store.client import RedisClient
from streamscore.store.codec import decode_lead
from streamscore.store.commit import split_value
from streamscore.store.keys import KeySpace

Kind = Literal["live", "shadow", "replay"]
NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
#: Lead values read per MGET (one key group each).
READ_BATCH: Final = 500
_GROUP_TAG: Final = re.compile(rb"\{g(\d+)\}")
_GLOB_SPECIAL: Final = re.compile(r"([*?\[\]\\])")


class Namespace(NamedTuple):
    """Where one model's lead states are: its kind, its name and its key prefix."""

    kind: Kind
    name: str
    prefix: str

    @property
    def spec(self) -> str:
        """How commands name it: `live`, `shadow:<model>` or `replay:<name>`."""
        return "live" if self.kind == "live" else f"{self.kind}:{self.name}"


def live_namespace(prefix: str) -> Namespace:
    """The live lead states (the worker's redis_key_prefix)."""
    return Namespace("live", "live", prefix)


def shadow_namespace(prefix: str, model: str) -> Namespace:
    """A shadow model's lead states."""
    return Namespace("shadow", model, f"{prefix}:m:{model}")


def replay_namespace(prefix: str, name: str) -> Namespace:
    """A replay's lead states; `name` must match NAME."""
    if not NAME.fullmatch(name):
        raise StreamscoreError(
            f"replay name {name!r}: use 1 to 40 of a-z, 0-9, '_' and '-', starting with a letter "
            "or digit"
        )
    return Namespace("replay", name, f"{prefix}:r:{name}")


def parse_namespace(spec: str, prefix: str) -> Namespace:
    """`live`, `shadow:<model>` or `replay:<name>` under the live key prefix `prefix`."""
    if spec == "live":
        return live_namespace(prefix)
    kind, _, name = spec.partition(":")
    if kind == "replay":
        return replay_namespace(prefix, name)
    if kind == "shadow" and re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
        return shadow_namespace(prefix, name)
    raise StreamscoreError(
        f"{spec!r} is not a namespace: use live, shadow:<model> or replay:<name> "
        "(or a snapshot file, *.jsonl)"
    )


def _glob(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def lead_pattern(namespace: Namespace) -> str:
    """The SCAN pattern of the namespace's lead keys (see KeySpace.lead)."""
    return f"{_glob(namespace.prefix)}:{{g*}}:lead:*"


def _group_of(key: bytes) -> int:
    match = _GROUP_TAG.search(key)
    if match is None:  # pragma: no cover - the pattern only matches tagged keys
        raise ValueError(f"not a lead key: {key!r}")
    return int(match.group(1))


async def scan_leads(
    client: RedisClient, namespace: Namespace, batch: int = READ_BATCH
) -> AsyncIterator[LeadState]:
    """Every lead state of the namespace, in no particular order (SCAN, then MGET per group)."""
    buckets: dict[int, list[bytes]] = defaultdict(list)

    async def read(keys: Sequence[bytes]) -> list[LeadState]:
        values = await client.execute("MGET", *keys, key=keys[0])
        return [decode_lead(split_value(v)[1]) for v in values if v is not None]

    async for key in client.scan_iter(match=lead_pattern(namespace), count=1000):
        bucket = buckets[_group_of(key)]
        bucket.append(key)
        if len(bucket) >= batch:
            for state in await read(bucket):
                yield state
            bucket.clear()
    for bucket in buckets.values():
        if bucket:
            for state in await read(bucket):
                yield state


async def count_keys(client: RedisClient, namespace: Namespace) -> int:
    """How many keys the namespace holds (leads, offsets, indexes, counters, its meta)."""
    count = 0
    async for _ in client.scan_iter(match=f"{_glob(namespace.prefix)}:*", count=1000):
        count += 1
    return count


async def delete_namespace(client: RedisClient, namespace: Namespace) -> int:
    """Delete every key of a replay's namespace; how many. Refuses live and shadow state."""
    if namespace.kind != "replay":
        raise StreamscoreError(f"{namespace.spec}: only a replay's namespace can be deleted")
    deleted = 0
    async for key in client.scan_iter(match=f"{_glob(namespace.prefix)}:*", count=1000):
        deleted += int(await client.execute("UNLINK", key, key=key))
    return deleted


def keyspace(namespace: Namespace, groups: int) -> KeySpace:
    """The key builder of a namespace."""
    return KeySpace(namespace.prefix, groups)
