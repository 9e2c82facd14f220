"""streamscore 0.1's Lua engine, kept only to write lead states in the old format for tests.

0.1 applied events in Lua (lead.lua + apply_batch.lua, copied here unchanged) and stored each lead
as a MessagePack map without a version prefix; the codec still decodes those states, so that an
upgraded worker carries on from them. `apply_v01` encodes a batch as 0.1's store/wire.py did.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import orjson
import redis.asyncio as aioredis

from streamscore.scoring.engine import Decision
from streamscore.scoring.rules import CompiledRules
from streamscore.store.keys import KeySpace

_HERE = Path(__file__).parent
SCRIPT = (_HERE / "lead.lua").read_text() + "\n" + (_HERE / "apply_batch.lua").read_text()


class V01Event(NamedTuple):
    """An event as 0.1's worker handed it to apply_batch.lua."""

    lead_id: str
    event_id: str
    time_ms: int
    offset: int
    decision: Decision


def config(rules: CompiledRules, dedup_window_ms: int) -> bytes:
    """0.1's script config: the arithmetic parameters of the rules."""
    c = rules.script_config()
    return orjson.dumps({**c, "dedup_window_ms": dedup_window_ms})


async def apply_v01(
    client: aioredis.Redis, keys: KeySpace, rules: CompiledRules, events: Sequence[V01Event]
) -> None:
    """Apply events with 0.1's script, one call per key group (keys of `keys`, 0.1 layout)."""
    groups: dict[int, list[V01Event]] = {}
    for ev in events:
        groups.setdefault(keys.lead_ref(ev.lead_id).group, []).append(ev)
    conf = config(rules, 3_600_000)
    for group, evs in groups.items():
        tag = f"{keys.prefix}:{{g{group}}}"
        call_keys = [f"{tag}:offsets", f"{tag}:due", f"{tag}:outbox"]
        slots: dict[str, int] = {}
        leads: list[str] = []
        cols: dict[str, list[Any]] = {k: [] for k in ("slot", "id", "t", "tp", "off", "flag", "aw")}
        attrs: list[Any] = []
        for ev in evs:
            ref = keys.lead_ref(ev.lead_id)
            if ref.digest not in slots:
                slots[ref.digest] = len(leads)
                leads.append(ev.lead_id)
                call_keys += [keys.lead(ref), f"{tag}:seen:{ref.digest}"]
            d = ev.decision
            if d.attributes:
                attrs.append([len(cols["slot"]), [
                    [a.attribute, a.value, a.fit_points, a.bant_mask, int(a.disqualify),
                     [list(r) for r in a.reasons]] for a in d.attributes
                ]])  # fmt: skip
            cols["slot"].append(slots[ref.digest])
            cols["id"].append(ev.event_id)
            cols["t"].append(ev.time_ms)
            cols["tp"].append(0)
            cols["off"].append(ev.offset)
            cols["flag"].append(d.flag)
            cols["aw"].append([x for award in d.awards for x in award])
        payload = msgpack.packb(
            {"tps": ["topic:0"], "leads": leads, **cols, "at": attrs}, use_bin_type=True
        )
        await client.eval(SCRIPT, len(call_keys), *call_keys, conf, payload, 0)
