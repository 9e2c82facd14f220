"""Outbox entries: the outputs of one commit call, as the worker records and re-drives them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack

from streamscore.scoring.outputs import Output


class ScoredOutput(NamedTuple):
    """An output with the time its batch was committed (the messages' scored_at)."""

    output: Output
    scored_at: int


class Record(NamedTuple):
    """A message already formatted for its topic (SLA breaches, internal repartitioning)."""

    topic: str
    key: bytes
    value: bytes


def encode_outputs(
    outputs: Sequence[Output], scored_at: int, records: Sequence[Record] = ()
) -> bytes:
    """One outbox entry: [scored_at, [output fields...], [records]] in MessagePack.

    Empty (b"") when there is nothing to send: no entry is recorded then.
    """
    if not outputs and not records:
        return b""
    packed: bytes = msgpack.packb([scored_at, outputs, records], use_bin_type=True)
    return packed


def decode_entry(entry: bytes) -> tuple[list[ScoredOutput], list[Record]]:
    """The outputs and records of one outbox entry, as encode_outputs wrote them."""
    if not entry:
        return [], []
    fields = msgpack.unpackb(entry, raw=False)
    scored_at, rows = fields[0], fields[1]
    records = [Record(*r) for r in fields[2]] if len(fields) > 2 else []
    return [ScoredOutput(_output(row), scored_at) for row in rows], records


def decode_outputs(entry: bytes) -> list[ScoredOutput]:
    """The outputs of one outbox entry (its records left out)."""
    return decode_entry(entry)[0]


def _output(row: list[Any]) -> Output:
    fields = dict(zip(Output._fields, row, strict=True))
    fields["reasons"] = tuple((rule, points) for rule, points in fields["reasons"])
    return Output(**fields)
