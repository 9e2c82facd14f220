"""RedisStore: lead values, applied offsets, due sets, the outbox and KPI counters in Redis.

Every write of scoring state goes through one commit.lua call per key group (store/commit.py);
the rest are reads and the outbox's bookkeeping. All keys of one call share the group's hash
tag, so every method works on one Redis server and on a Redis Cluster alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from streamscore.scoring.state import LeadState
from streamscore.store.client import PackedCall, RedisClient
from streamscore.store.codec import decode_lead
from streamscore.store.commit import CommitResult, parse_reply, split_value
from streamscore.store.forgotten import ForgottenLeads, parse_member
from streamscore.store.keys import KeySpace


class RedisStore:
    """The worker's, the tools' and the views' one way into Redis."""

    def __init__(self, client: RedisClient, keyspace: KeySpace) -> None:
        self.client = client
        self.keys = keyspace

    async def ping(self) -> bool:
        """True when Redis answers."""
        return await self.client.ping()

    async def close(self) -> None:
        """Disconnect."""
        await self.client.close()

    async def load_values(self, keys: Sequence[str]) -> list[bytes | None]:
        """Stored values of lead keys of ONE key group (one MGET), None where absent."""
        if not keys:
            return []
        values: list[bytes | None] = await self.client.execute("MGET", *keys, key=keys[0])
        return values

    async def read_lead(self, lead_id: str) -> bytes | None:
        """One lead's stored value (None when unknown)."""
        key = self.keys.lead(self.keys.lead_ref(lead_id))
        value: bytes | None = await self.client.execute("GET", key, key=key)
        return value

    async def lead_state(self, lead_id: str) -> LeadState | None:
        """One lead's stored state (None when unknown)."""
        raw = await self.read_lead(lead_id)
        return None if raw is None else decode_lead(split_value(raw)[1], lead_id)

    async def recorded_offsets(self, tps: Sequence[str]) -> dict[tuple[int, str], int]:
        """The applied offset of each "topic:partition" in each key group that has one."""
        out: dict[tuple[int, str], int] = {}
        if not tps:
            return out
        for group in range(self.keys.groups):
            key = self.keys.offsets(group)
            values = await self.client.execute("HMGET", key, *tps, key=key)
            for tp, value in zip(tps, values, strict=True):
                if value is not None:
                    out[(group, tp)] = int(value)
        return out

    async def applied_offsets(self) -> dict[str, int]:
        """Highest applied offset per "topic:partition", over all groups (how far scoring got)."""
        merged: dict[str, int] = {}
        for group in range(self.keys.groups):
            key = self.keys.offsets(group)
            for tp, offset in _pairs(await self.client.execute("HGETALL", key, key=key)):
                name = _text(tp)
                merged[name] = max(merged.get(name, -1), int(offset))
        return merged

    async def commit(self, packed: PackedCall, outputs: bytes) -> CommitResult:
        """Run one packed commit call with its outputs; nothing is written on a conflict."""
        reply: Sequence[Any] = await self.client.run_packed(packed, outputs)
        return parse_reply(reply)

    async def due_keys(
        self, group: int, partition: int, until_ms: int, limit: int, sla: bool = False
    ) -> list[str]:
        """Lead keys of one group and partition whose inactivity drop (or, with `sla`, whose
        first-touch SLA check) is due by until_ms."""
        key = (self.keys.sla_due if sla else self.keys.due)(group, partition)
        rows = await self.client.execute(
            "ZRANGEBYSCORE", key, "-inf", until_ms, "LIMIT", 0, limit, key=key
        )
        return [_text(row) for row in rows]

    async def tier_queue(self, group: int, tier: str, limit: int) -> list[tuple[str, float]]:
        """The group's leads in `tier`, highest score first: (lead key, score)."""
        key = self.keys.tier_index(group, tier)
        rows = await self.client.execute("ZREVRANGE", key, 0, limit - 1, "WITHSCORES", key=key)
        return [(_text(m), float(v)) for m, v in _pairs(rows)]

    async def trim_tier_index(self, group: int, tier: str, keep: int) -> int:
        """Keep the `keep` best leads of a tier index (it only serves the top of the queue)."""
        key = self.keys.tier_index(group, tier)
        return int(await self.client.execute("ZREMRANGEBYRANK", key, 0, -keep - 1, key=key))

    async def due_count(self, partitions: Iterable[int], until_ms: int) -> int:
        """Leads of these partitions, over all groups, whose drop is due by until_ms."""
        total = 0
        for partition in partitions:
            for group in range(self.keys.groups):
                key = self.keys.due(group, partition)
                total += int(await self.client.execute("ZCOUNT", key, "-inf", until_ms, key=key))
        return total

    async def pending_outbox(self, group: int, older_than_ms: int) -> list[tuple[str, bytes]]:
        """Outbox entries recorded before older_than_ms (ms since epoch), oldest first."""
        key = self.keys.outbox(group)
        rows = await self.client.execute("XRANGE", key, "-", older_than_ms, "COUNT", 1000, key=key)
        out = []
        for entry_id, fields in rows or []:
            values = dict(_pairs(fields))
            out.append((_text(entry_id), bytes(values[b"o"])))
        return out

    async def ack_outbox(self, group: int, entry_ids: Sequence[str]) -> None:
        """Forget outbox entries the broker has acknowledged."""
        if entry_ids:
            key = self.keys.outbox(group)
            await self.client.execute("XDEL", key, *entry_ids, key=key)

    async def outbox_length(self) -> int:
        """Outbox entries across all groups."""
        total = 0
        for group in range(self.keys.groups):
            key = self.keys.outbox(group)
            total += int(await self.client.execute("XLEN", key, key=key))
        return total

    async def forget_offsets(self, tp: str) -> None:
        """Drop the applied offset of one "topic:partition" in every group."""
        for group in range(self.keys.groups):
            key = self.keys.offsets(group)
            await self.client.execute("HDEL", key, tp, key=key)

    async def forgotten_members(self, group: int) -> list[str]:
        """The group's forgotten set, read in one command so that its size and members agree."""
        key = self.keys.forgotten(group)
        return [_text(m) for m in await self.client.execute("SMEMBERS", key, key=key)]

    async def forgotten_leads(self) -> ForgottenLeads:
        """Every group's forgotten set: who is forgotten since when, and each set's size."""
        members = {g: await self.forgotten_members(g) for g in range(self.keys.groups)}
        return ForgottenLeads.from_members(members)

    async def forgotten_digests(self) -> set[str]:
        """The digests of every forgotten lead, over all groups."""
        out: set[str] = set()
        for group in range(self.keys.groups):
            out.update(parse_member(m)[0] for m in await self.forgotten_members(group))
        return out

    async def outbox_entries(self, group: int) -> list[tuple[str, bytes]]:
        """Every entry of the group's outbox, oldest first (read in pages)."""
        key = self.keys.outbox(group)
        out: list[tuple[str, bytes]] = []
        start = "-"
        while True:
            rows = await self.client.execute("XRANGE", key, start, "+", "COUNT", 1000, key=key)
            for entry_id, fields in rows or []:
                values = dict(_pairs(fields))
                out.append((_text(entry_id), bytes(values[b"o"])))
            if not rows or len(rows) < 1000:
                return out
            start = "(" + out[-1][0]

    async def kpi_counters(self) -> dict[str, int]:
        """Every KPI counter, summed over the key groups."""
        totals: dict[str, int] = {}
        for group in range(self.keys.groups):
            key = self.keys.kpi(group)
            for name, value in _pairs(await self.client.execute("HGETALL", key, key=key)):
                field = _text(name)
                totals[field] = totals.get(field, 0) + int(value)
        return totals


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    # A field-value reply: a flat list over RESP2, a mapping or pairs once a client parses it.
    if isinstance(reply, dict):
        return list(reply.items())
    if reply and isinstance(reply[0], list | tuple):
        return [(pair[0], pair[1]) for pair in reply]
    return list(zip(reply[::2], reply[1::2], strict=True))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
