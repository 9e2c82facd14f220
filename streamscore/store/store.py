"""RedisStore: runs the Lua scripts, drains the outbox and reads lead state."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import hiredis
import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from streamscore.store.keys import KeySpace
from streamscore.store.wire import GroupBatch, decode_lead_state


def _script(name: str) -> str:
    scripts = resources.files("streamscore.store") / "scripts"
    prelude = (scripts / "lead.lua").read_text(encoding="utf-8")
    return prelude + "\n" + (scripts / name).read_text(encoding="utf-8")


APPLY_BATCH_LUA = _script("apply_batch.lua")
TICK_LUA = _script("tick.lua")


@dataclass(frozen=True, slots=True)
class ScriptResult:
    """What one script call recorded: its outbox entry (if any), outputs and duplicates."""

    group: int
    outbox_entry: str
    outputs: bytes
    duplicates: list[int]


@dataclass(frozen=True, slots=True)
class PackedApply:
    """One group's apply_batch call, encoded in the Redis protocol but for its scored_at.

    A 5,000-event call carries about 8,600 key arguments; redis-py's encoder took about 8 ms a
    call for them, on the path between one reply and the next send. Packing while the batch is
    decided takes that off the path, and hiredis does it in about 1 ms.
    """

    batch: GroupBatch
    arguments: int  # scored_at included
    body: bytes  # every argument but scored_at, without the array header


def connect(
    url: str, *, ssl_ca_certs: str | None = None, socket_timeout: float | None = 5.0
) -> Redis:
    """A Redis client from a redis://, rediss:// or unix:// URL (password in the URL).

    With `socket_timeout=None` the caller must bound its calls itself (the worker does, with
    asyncio.timeout): redis-py enforces a socket timeout on sends with asyncio.wait_for, which
    on Python 3.11 runs the send in a new task, queued behind every callback already ready.
    """
    kwargs: dict[str, Any] = {
        "health_check_interval": 10,
        "socket_connect_timeout": 5,
        "socket_timeout": socket_timeout,
    }
    if ssl_ca_certs:
        kwargs["ssl_ca_certs"] = ssl_ca_certs
    client: Redis = aioredis.Redis.from_url(url, **kwargs)
    return client


class RedisStore:
    """Applies batches and ticks atomically; every method is one round trip or one script."""

    def __init__(self, client: Redis, keyspace: KeySpace) -> None:
        self.client = client
        self.keys = keyspace
        self._apply: AsyncScript = client.register_script(APPLY_BATCH_LUA)
        self._tick: AsyncScript = client.register_script(TICK_LUA)

    async def ping(self) -> bool:
        """True when Redis answers."""
        return bool(await self.client.ping())

    def pack(self, batch: GroupBatch, config_json: bytes) -> PackedApply:
        """Encode one group's apply call ahead of time (see PackedApply)."""
        args: tuple[str | int | bytes, ...] = (
            "EVALSHA", self._apply.sha, len(batch.keys), *batch.keys, config_json, batch.payload
        )  # fmt: skip
        # hiredis's stub types the argument as a 1-tuple; any length is accepted.
        body: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
        return PackedApply(batch, len(args) + 1, body[body.index(b"\r\n") + 2 :])

    async def apply(self, batch: GroupBatch, config_json: bytes, now_ms: int) -> ScriptResult:
        """Apply one group's events; the offsets and outbox entry are recorded in the same call."""
        return await self.apply_packed(self.pack(batch, config_json), now_ms)

    async def apply_packed(self, packed: PackedApply, now_ms: int) -> ScriptResult:
        """apply() of a call packed beforehand."""
        scored_at = str(now_ms).encode()
        command = [
            b"*%d\r\n" % packed.arguments,
            packed.body,
            b"$%d\r\n%s\r\n" % (len(scored_at), scored_at),
        ]
        entry, outputs, dups = await self._send_packed(command)
        batch = packed.batch
        # cjson encodes an empty list as {}.
        duplicates = orjson.loads(dups) or []
        return ScriptResult(batch.group, _text(entry), _bytes(outputs), duplicates)

    async def _send_packed(self, command: list[bytes]) -> Any:
        # redis-py disconnects a connection whose call failed or was cancelled mid-way, so a
        # late reply is never read by the next call.
        pool = self.client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(command)
            try:
                return await conn.read_response()
            except NoScriptError:
                # A restarted or flushed server: load the script (as redis-py's Script does).
                await self.client.script_load(APPLY_BATCH_LUA)
                await conn.send_packed_command(command)
                return await conn.read_response()
        finally:
            await pool.release(conn)

    async def tick(
        self, group: int, config_json: bytes, until_ms: int, limit: int, now_ms: int
    ) -> tuple[ScriptResult, int]:
        """Apply inactivity tier drops due by until_ms; returns the result and leads advanced."""
        entry, outputs, advanced = await self._tick(
            keys=[self.keys.due(group), self.keys.outbox(group)],
            args=[config_json, until_ms, limit, now_ms],
        )
        return ScriptResult(group, _text(entry), _bytes(outputs), []), int(advanced)

    async def ack_outbox(self, group: int, entry_ids: list[str]) -> None:
        """Forget outbox entries the broker has acknowledged."""
        if entry_ids:
            await self.client.xdel(self.keys.outbox(group), *entry_ids)

    async def pending_outbox(self, group: int, older_than_ms: int) -> list[tuple[str, bytes]]:
        """Outbox entries recorded before older_than_ms (ms since epoch), oldest first."""
        rows: Any = await self.client.xrange(self.keys.outbox(group), "-", older_than_ms, 1000)
        return [(_text(entry_id), _bytes(fields[b"o"])) for entry_id, fields in rows or []]

    async def outbox_length(self) -> int:
        """Outbox entries across all groups."""
        total = 0
        for group in range(self.keys.groups):
            total += int(await self.client.xlen(self.keys.outbox(group)))
        return total

    async def due_count(self, until_ms: int) -> int:
        """Leads whose inactivity drop is due by until_ms, across all groups."""
        total = 0
        for group in range(self.keys.groups):
            total += int(await self.client.zcount(self.keys.due(group), "-inf", until_ms))
        return total

    async def lead_fields(self, lead_id: str) -> dict[str, str]:
        """The stored state of one lead, field by field (empty when unknown)."""
        raw = await self.client.get(self.keys.lead(self.keys.lead_ref(lead_id)))
        return decode_lead_state(None if raw is None else _bytes(raw))

    async def forget_offsets(self, topic_partition: str) -> None:
        """Drop the applied offset of one "topic:partition" in every group."""
        for group in range(self.keys.groups):
            await self.client.hdel(self.keys.offsets(group), topic_partition)

    async def applied_offsets(self) -> dict[str, int]:
        """Highest applied offset per topic-partition, over all groups."""
        merged: dict[str, int] = {}
        for group in range(self.keys.groups):
            for tp, off in (await self.client.hgetall(self.keys.offsets(group))).items():
                key = _text(tp)
                merged[key] = max(merged.get(key, -1), int(off))
        return merged


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()
