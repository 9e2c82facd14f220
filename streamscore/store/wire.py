"""Encode scored events into the batch format apply_batch.lua reads, and decode its outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streamscore.scoring.engine import Decision
from streamscore.scoring.model import Output
from streamscore.store.keys import KeySpace, LeadRef


@dataclass(frozen=True, slots=True)
class ScoredEvent:
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


def encode_batches(events: Sequence[ScoredEvent], keyspace: KeySpace) -> list[GroupBatch]:
    """Split events by key group (order kept) and encode each group for apply_batch.lua."""
    by_group: dict[
        int, tuple[list[str], dict[str, int], dict[str, int], list[Any], list[ScoredEvent]]
    ]
    by_group = {}
    refs: dict[str, LeadRef] = {}
    for ev in events:
        ref = refs.get(ev.lead_id)
        if ref is None:
            ref = refs[ev.lead_id] = keyspace.lead_ref(ev.lead_id)
        entry = by_group.get(ref.group)
        if entry is None:
            entry = by_group[ref.group] = (
                [keyspace.offsets(ref.group), keyspace.due(ref.group), keyspace.outbox(ref.group)],
                {},
                {},
                [],
                [],
            )
        keys, slots, tps, rows, kept = entry
        slot = slots.get(ref.digest)
        if slot is None:
            slot = slots[ref.digest] = len(slots)
            keys.append(keyspace.lead(ref))
            keys.append(keyspace.seen(ref))
        tp = f"{ev.topic}:{ev.partition}"
        tp_index = tps.get(tp)
        if tp_index is None:
            tp_index = tps[tp] = len(tps)
        d = ev.decision
        rows.append(
            [
                slot,
                ev.lead_id,
                ev.event_id,
                ev.time_ms,
                tp_index,
                ev.offset,
                d.awards,
                [
                    (a.attribute, a.value, a.fit_points, a.bant_mask, int(a.disqualify), a.reasons)
                    for a in d.attributes
                ],
                d.flag,
            ]
        )
        kept.append(ev)
    return [
        GroupBatch(group, keys, orjson.dumps({"tps": list(tps), "ev": rows}), kept)
        for group, (keys, _, tps, rows, kept) in by_group.items()
    ]


def decode_outputs(encoded: bytes | str) -> list[Output]:
    """Turn the script's output tuples back into Output values."""
    if not encoded:
        return []
    outputs = []
    for row in orjson.loads(encoded):
        (
            kind,
            lead_id,
            seq,
            old,
            new,
            score,
            engagement,
            fit,
            grade,
            bant,
            reasons,
            event_id,
            time_ms,
            cause,
            _version,
            _scored_at,
        ) = row
        outputs.append(
            Output(
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
            )
        )
    return outputs


def output_rows(encoded: bytes | str) -> list[list[Any]]:
    """Raw output tuples, including rules version and scored_at, for the emitter."""
    rows: list[list[Any]] = orjson.loads(encoded) if encoded else []
    return rows
