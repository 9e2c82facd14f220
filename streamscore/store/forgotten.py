"""The forgotten sets: who was forgotten when, what that blocks, and what leaves the outbox.

A forget adds "digest@forget ms" to its key group's forgotten set (commit.lua's delete). A record
of that lead with an event time at or before the forget time is dropped by every worker that
reads the set, live or replaying; a later one starts a fresh lead. The set only grows, so its
size is the fence of a commit call: a worker that scored a batch knowing n forgets in a group
cannot commit it once the group holds n + 1 (commit.lua answers a conflict, the worker re-reads).
Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final, NamedTuple

from streamscore.store.outbox import Record, decode_entry, encode_outputs

SEPARATOR: Final = "@"
#: The forget time of a member recorded without one: every record of the lead is dropped.
FOREVER_MS: Final = 2**63 - 1


def member(digest: str, forget_ms: int) -> str:
    """The forgotten set's member for a lead forgotten at `forget_ms`."""
    return f"{digest}{SEPARATOR}{forget_ms}"


def parse_member(text: str) -> tuple[str, int]:
    """(digest, forget ms) of a member; a bare digest is forgotten for ever."""
    digest, sep, when = text.partition(SEPARATOR)
    if not sep:
        return digest, FOREVER_MS
    try:
        return digest, int(when)
    except ValueError:
        return digest, FOREVER_MS  # unreadable: the safe reading is "dropped for ever"


class ForgottenLeads:
    """What a worker knows of the forgotten sets: each group's size, each lead's forget time."""

    __slots__ = ("_sizes", "_until")

    def __init__(self, sizes: Mapping[int, int], until: Mapping[str, int]) -> None:
        self._sizes = dict(sizes)
        self._until = dict(until)

    @classmethod
    def from_members(cls, members: Mapping[int, Sequence[str]]) -> ForgottenLeads:
        """From each group's members (read atomically per group, so size and content agree)."""
        until: dict[str, int] = {}
        for rows in members.values():
            for row in rows:
                digest, when = parse_member(row)
                if when > until.get(digest, -1):
                    until[digest] = when  # forgotten twice: the later forget holds
        return cls({g: len(rows) for g, rows in members.items()}, until)

    def __bool__(self) -> bool:
        return bool(self._until)

    def __len__(self) -> int:
        return len(self._until)

    def size(self, group: int) -> int:
        """The size of the group's set when it was read (the commit fence)."""
        return self._sizes.get(group, 0)

    def until_ms(self, digest: str) -> int | None:
        """The lead's latest forget time, None if it was never forgotten."""
        return self._until.get(digest)

    def blocks(self, digest: str, time_ms: int) -> bool:
        """Whether a record of the lead at `time_ms` predates (or is at) its forget: dropped."""
        until = self._until.get(digest)
        return until is not None and time_ms <= until


class Withdrawal(NamedTuple):
    """A pending outbox entry without the forgotten lead: its replacement (b"": remove it)."""

    entry_id: str
    replacement: bytes
    withdrawn: int  # outputs and records of the lead taken out


def without_lead(entries: Iterable[tuple[str, bytes]], lead_id: str) -> list[Withdrawal]:
    """The rewrites that take a lead's outputs and records out of pending outbox entries.

    Entries that carry nothing of the lead are left alone. Records are the lead's when keyed by
    its id (SLA breaches); outputs when their lead_id is it.
    """
    key = lead_id.encode("utf-8", "surrogatepass")
    out = []
    for entry_id, encoded in entries:
        outputs, records = decode_entry(encoded)
        kept_outputs = [o.output for o in outputs if o.output.lead_id != lead_id]
        kept_records: list[Record] = [r for r in records if r.key != key]
        withdrawn = len(outputs) - len(kept_outputs) + len(records) - len(kept_records)
        if not withdrawn:
            continue
        scored_at = outputs[0].scored_at if outputs else 0
        out.append(
            Withdrawal(entry_id, encode_outputs(kept_outputs, scored_at, kept_records), withdrawn)
        )
    return out
