"""A replay's scope: the history it rescores (offsets, event times, a sample of leads).

The worker consumes the same way for a replay as live; the scope only clips what a fetch
returns and says when the replay is done. History ends at the high watermarks taken when the
replay starts, so events that arrive meanwhile are left to the live worker, and two replays of
the same history see the same records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import TopicPartition

from streamscore.events import Event
from streamscore.events.accounts import AccountRecord
from streamscore.events.identity import IdentityRecord
from streamscore.lab.ab import arm_draw
from streamscore.outcomes.events import Outcome

#: The sample's hash key: a lead's draw is independent of its A/B arms.
SAMPLE_KEY: Final = "streamscore-replay-sample"


@dataclass(frozen=True, slots=True)
class LeadSample:
    """Which leads a replay scores: a share of all, drawn by a stable hash, or listed ids."""

    fraction: float | None = None
    ids: frozenset[str] | None = None

    def admits(self, lead_id: str) -> bool:
        """Whether the lead is in the sample (the same answer on every run)."""
        if self.ids is not None:
            return lead_id in self.ids
        if self.fraction is None or self.fraction >= 1:
            return True
        return arm_draw(SAMPLE_KEY, "in", lead_id) <= self.fraction

    def describe(self) -> str:
        """How the sample was chosen, for the replay's record."""
        if self.ids is not None:
            return f"{len(self.ids)} listed leads"
        return "all leads" if self.fraction is None else f"{self.fraction:.2%} of leads"


@dataclass(slots=True)
class ReplayScope:
    """The records a replay scores: offsets below `ends`, events in [from_ms, until_ms]."""

    ends: Mapping[TopicPartition, int]
    from_ms: int | None = None
    until_ms: int | None = None
    leads: LeadSample = field(default_factory=LeadSample)
    #: Send outputs to the replay's own topics (False: record and drop them).
    emit: bool = False
    #: The model name of the replay's rules in its KPIs and funnels: the replay's name.
    model: str = "replay"
    #: Records left out: beyond the window or outside the sample (counted, not scored).
    skipped: int = 0
    #: Invalid records: the live worker dead-lettered them already, so a replay only counts.
    invalid: int = 0

    def clip(self, records: Mapping[TopicPartition, Sequence[Any]]) -> dict[TopicPartition, Any]:
        """A fetch without the records at or beyond each partition's end (empty ones dropped)."""
        out: dict[TopicPartition, Any] = {}
        for tp, fetched in records.items():
            end = self.ends.get(tp, 0)
            kept: Sequence[Any] = fetched
            if fetched and fetched[-1].offset >= end:
                kept = [m for m in fetched if m.offset < end]
            if kept:
                out[tp] = kept
        return out

    def admits(self, record: Event | Outcome | IdentityRecord | AccountRecord) -> bool:
        """Whether a valid record is in the window and its lead in the sample; counts the rest.

        Identity and account records (the live worker's cross-lead effects, carrying live
        state) are never replayed: a replay scores each id on its own."""
        if isinstance(record, (IdentityRecord, AccountRecord)):
            self.skipped += 1
            return False
        time_ms = record.time_ms
        if (
            (self.from_ms is not None and time_ms < self.from_ms)
            or (self.until_ms is not None and time_ms > self.until_ms)
            or not self.leads.admits(record.lead_id)
        ):
            self.skipped += 1
            return False
        return True

    def highwater(self, tp: TopicPartition, highwater: int | None) -> int | None:
        """The partition's high watermark as far as the replay is concerned."""
        end = self.ends.get(tp, 0)
        return end if highwater is None else min(highwater, end)

    def reached(self, positions: Mapping[TopicPartition, int]) -> bool:
        """Every partition fetched up to its end (partitions without history count as done)."""
        return all(positions.get(tp, 0) >= end for tp, end in self.ends.items() if end > 0)
