"""The Output value: a tier change or a handoff, as the scoring arithmetic produces it."""

from __future__ import annotations

from typing import Literal, NamedTuple

OutputKind = Literal["handoff", "tier_change"]
#: What moved the score: an input event, time (decay), or an identity merge (scoring/identity.py).
Cause = Literal["event", "decay", "merge"]


class Output(NamedTuple):
    """A tier change or a handoff produced by applying an event or by decay.

    A NamedTuple, not a dataclass: the hot path builds it positionally, at tuple speed. The
    runtime adds `scored_at` when it emits.
    """

    kind: OutputKind
    lead_id: str
    seq: int  # the lead's output sequence number: 1, 2, 3 ... (output ids derive from it)
    old_tier: str
    new_tier: str
    score: float
    engagement: float
    fit: float
    grade: int  # 1 = A ... 4 = D
    bant_mask: int
    reasons: tuple[tuple[str, float], ...]  # top rules by points: (rule id, points)
    event_id: str | None  # None for a drop caused by decay
    time_ms: int  # the triggering event's time, or the due time of a decay drop
    cause: Cause  # a merge's outputs carry the merging event's id (an alias or identify)
    rules_version: str
