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


def encode_outputs(outputs: Sequence[Output], scored_at: int) -> bytes:
    """One outbox entry: [scored_at, [output fields...]...] in MessagePack ("" when empty)."""
    if not outputs:
        return b""
    packed: bytes = msgpack.packb([scored_at, outputs], use_bin_type=True)
    return packed


def decode_outputs(entry: bytes) -> list[ScoredOutput]:
    """The outputs of one outbox entry, as encode_outputs wrote them."""
    if not entry:
        return []
    scored_at, rows = msgpack.unpackb(entry, raw=False)
    return [ScoredOutput(_output(row), scored_at) for row in rows]


def _output(row: list[Any]) -> Output:
    fields = dict(zip(Output._fields, row, strict=True))
    fields["reasons"] = tuple((rule, points) for rule, points in fields["reasons"])
    return Output(**fields)
