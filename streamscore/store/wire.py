"""Encode scored events into the batch format apply_batch.lua reads, and decode its outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
import orjson

from streamscore.scoring.engine import Decision
from streamscore.scoring.outputs import Output
from streamscore.store.keys import KeySpace


class ScoredEvent(NamedTuple):
    """An event ready for the store: identity, time, source position and decision."""

    lead_id: str
    event_id: str
    time_ms: int
    topic: str
    partition: int
    offset: int
    decision: Decision


@dataclass(frozen=True, slots=True)
class GroupBatch:
    """One script call's worth of events: all in one key group."""

    group: int
    keys: list[str]
    payload: bytes
    events: list[ScoredEvent]


@dataclass(slots=True)
class _GroupColumns:
    """The batch of one key group, by column (the layout apply_batch.lua reads)."""

    keys: list[str]
    slots_by_digest: dict[str, int] = field(default_factory=dict)
    tps: dict[str, int] = field(default_factory=dict)
    leads: list[str] = field(default_factory=list)
    slot: list[int] = field(default_factory=list)
    event_id: list[str] = field(default_factory=list)
    time_ms: list[int] = field(default_factory=list)
    tp: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    flag: list[int] = field(default_factory=list)
    awards: list[list[float]] = field(default_factory=list)
    attributes: list[tuple[int, list[tuple[Any, ...]]]] = field(default_factory=list)
    events: list[ScoredEvent] = field(default_factory=list)

    def payload(self) -> bytes:
        packed: bytes = msgpack.packb(
            {
                "tps": list(self.tps),
                "leads": self.leads,
                "slot": self.slot,
                "id": self.event_id,
                "t": self.time_ms,
                "tp": self.tp,
                "off": self.offset,
                "flag": self.flag,
                "aw": self.awards,
                "at": self.attributes,
            },
            use_bin_type=True,
        )
        return packed


def encode_batches(events: Sequence[ScoredEvent], keyspace: KeySpace) -> list[GroupBatch]:
    """Split events by key group (order kept) and encode each group for apply_batch.lua."""
    by_group: dict[int, _GroupColumns] = {}
    for ev in events:
        ref = keyspace.lead_ref(ev.lead_id)
        g = by_group.get(ref.group)
        if g is None:
            g = by_group[ref.group] = _GroupColumns(
                [keyspace.offsets(ref.group), keyspace.due(ref.group), keyspace.outbox(ref.group)]
            )
        slot = g.slots_by_digest.get(ref.digest)
        if slot is None:
            slot = g.slots_by_digest[ref.digest] = len(g.leads)
            g.leads.append(ev.lead_id)
            g.keys.append(keyspace.lead(ref))
            g.keys.append(keyspace.seen(ref))
        tp = f"{ev.topic}:{ev.partition}"
        tp_index = g.tps.get(tp)
        if tp_index is None:
            tp_index = g.tps[tp] = len(g.tps)
        d = ev.decision
        if d.attributes:
            g.attributes.append(
                (
                    len(g.slot),
                    [
                        (a.attribute, a.value, a.fit_points, a.bant_mask, int(a.disqualify),
                         a.reasons)
                        for a in d.attributes
                    ],
                )
            )  # fmt: skip
        g.slot.append(slot)
        g.event_id.append(ev.event_id)
        g.time_ms.append(ev.time_ms)
        g.tp.append(tp_index)
        g.offset.append(ev.offset)
        g.flag.append(d.flag)
        g.awards.append([x for award in d.awards for x in award])
        g.events.append(ev)
    return [GroupBatch(group, g.keys, g.payload(), g.events) for group, g in by_group.items()]


class ScriptOutput(NamedTuple):
    """One output of apply_batch.lua or tick.lua: what the model says, with its rules and time."""

    output: Output
    rules_version: str
    scored_at: int


def decode_outputs(encoded: bytes | str) -> list[ScriptOutput]:
    """The script's output rows (lead.lua's `emit`), decoded once for the emitter and the tests.

    Lua hands numbers back as numbers or as '%.17g' strings, and an empty reasons list as {}.
    """
    if not encoded:
        return []
    outputs = []
    for row in orjson.loads(encoded):
        (kind, lead_id, seq, old, new, score, engagement, fit, grade, bant, reasons, event_id,
         time_ms, cause, version, scored_at) = row  # fmt: skip
        output = Output(
            kind=kind,
            lead_id=lead_id,
            seq=int(seq),
            old_tier=old,
            new_tier=new,
            score=float(score),
            engagement=float(engagement),
            fit=float(fit),
            grade=int(grade),
            bant_mask=int(bant),
            reasons=tuple((r, float(p)) for r, p in (reasons or [])),
            event_id=event_id,
            time_ms=int(time_ms),
            cause=cause,
            rules_version=version,
        )
        outputs.append(ScriptOutput(output, version, int(scored_at)))
    return outputs


#: Core fields that lead.lua leaves out of the stored state while they hold these values.
LEAD_DEFAULTS: dict[str, int] = {
    "e": 0,
    "pen": 0,
    "tier": 0,
    "arm": 1,
    "n": 0,
    "dq": 0,
    "fit": 0,
    "fdq": 0,
    "bant": 0,
}


def decode_lead_state(raw: bytes | None) -> dict[str, str]:
    """A lead's stored state as text fields (numbers as numerals, records as JSON).

    Core fields the script left out because they held their default are filled in, and the
    packed profile (field P) is spread into one p:<attribute> field per attribute.
    """
    if not raw:
        return {}
    state: dict[str, Any] = _unpack(raw)
    packed_profile = state.pop("P", None)
    if packed_profile is not None:
        # Lua strings are bytes; msgpack hands this one back as text, bytes kept as surrogates.
        profile: dict[str, Any] = _unpack(packed_profile.encode("utf-8", "surrogateescape"))
        state.update({f"p:{name}": record for name, record in profile.items()})
    return {name: _as_text(value) for name, value in {**LEAD_DEFAULTS, **state}.items()}


def _unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False, unicode_errors="surrogateescape")


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return orjson.dumps(value).decode()
