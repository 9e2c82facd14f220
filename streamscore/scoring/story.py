"""A lead's story: its last few notable moments (events, outputs, outcomes), kept in its state.

The console draws a lead's score over time and lists what happened to it from these items, so
the story is bounded (`lead_story_max`) and compact: each item is a time, a kind, a label and
the score right after, in tenths of a point. Pure: the runtime decides what to record.
"""

from __future__ import annotations

import sys
from typing import Literal, NamedTuple

from streamscore.scoring.state import LeadState

StoryKind = Literal["event", "decay", "handoff", "tier", "outcome", "merge", "recycle", "sla"]
STORY_KINDS: tuple[StoryKind, ...] = (
    "event", "decay", "handoff", "tier", "outcome", "merge", "recycle", "sla",
)  # fmt: skip


class StoryItem(NamedTuple):
    """One moment of a lead's story: when, what kind, which (event type, tier...), the score."""

    time_ms: int
    kind: StoryKind
    label: str
    score: float


def record(
    state: LeadState, time_ms: int, kind: StoryKind, label: str, score: float, keep: int
) -> None:
    """Append one moment to the lead's story, keeping the `keep` latest (0 keeps none)."""
    if keep <= 0:
        return
    story = state.story
    if story is None:
        story = state.story = []
    # A tuple with its label interned: a lead keeps a dozen items and a worker caches every
    # lead of its partitions, so each item's bytes count. (An event type's label is already
    # one shared enum member, which intern refuses.)
    if type(label) is str:
        label = sys.intern(label)
    story.append((time_ms, STORY_KINDS.index(kind), label, round(score * 10)))
    if len(story) > keep:
        del story[: len(story) - keep]


def items(state: LeadState) -> list[StoryItem]:
    """The lead's story, oldest first."""
    return [
        StoryItem(int(t), STORY_KINDS[k], str(label), tenths / 10.0)
        for t, k, label, tenths in state.story or ()
    ]
