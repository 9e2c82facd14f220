"""The queue: the leads of each tier above the first, best first, read from the tier indexes.

The worker keeps one sorted set per key group and tier (the tier index), scored by each lead's
score at its last evaluation and trimmed to tier_index_max. The queue reads the top
`console_queue_size` of every index, judges each lead at now (describe_lead: a quiet lead may
have decayed, or be due a tier drop the decay tick has not applied yet) and lists each tier's
leads by their score now. So a lead shows under the tier it has now, never under a stale one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from streamscore.scoring.explain import describe_lead
from streamscore.scoring.rules import CompiledRules
from streamscore.scoring.state import LeadState
from streamscore.store.codec import StateCodecError, decode_lead
from streamscore.store.commit import split_value
from streamscore.store.store import RedisStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One lead of the queue, as judged now."""

    lead_id: str
    score: float
    engagement: float
    fit: float
    grade: str
    bant_met: int
    #: The lead's email domain until accounts exist (the rules' email_domain attribute).
    account: str | None
    last_event_time: str | None
    handoff_armed: bool
    disqualified: bool


@dataclass(frozen=True, slots=True)
class TierQueue:
    """One tier's leads, highest score first."""

    tier: str
    enter: float
    rows: tuple[QueueRow, ...]


def account_attribute(rules: CompiledRules) -> str | None:
    """The profile attribute that holds the lead's email domain (transform: email_domain)."""
    for attribute in rules.attributes:
        if attribute.transform == "email_domain":
            return attribute.name
    return None


def build_queue(
    states: Iterable[LeadState], rules: CompiledRules, now_ms: int, size: int
) -> list[TierQueue]:
    """Each tier above the first (highest first) with its `size` best leads at now."""
    domain = account_attribute(rules)
    by_tier: dict[str, list[QueueRow]] = {t.name: [] for t in rules.tiers[1:]}
    seen: set[str] = set()
    for state in states:
        if state.lead_id in seen:
            continue
        seen.add(state.lead_id)
        info = describe_lead(state, rules, now_ms)
        rows = by_tier.get(info["tier"])
        if rows is None:  # the first tier: not queued
            continue
        account = info["attributes"].get(domain) if domain else None
        rows.append(
            QueueRow(
                lead_id=state.lead_id,
                score=info["score"],
                engagement=info["engagement"],
                fit=info["fit"],
                grade=info["grade"],
                bant_met=sum(info["bant"].values()),
                account=None if account is None else str(account["value"]),
                last_event_time=info["last_event_time"],
                handoff_armed=info["handoff_armed"],
                disqualified=info["disqualified"],
            )
        )
    return [
        TierQueue(
            tier.name,
            tier.enter,
            tuple(sorted(by_tier[tier.name], key=lambda r: (-r.score, r.lead_id))[:size]),
        )
        for tier in reversed(rules.tiers[1:])
    ]


async def read_queue(
    store: RedisStore, rules: CompiledRules, now_ms: int, size: int
) -> list[TierQueue]:
    """The queue from the tier indexes: `size` leads per index and key group, judged at now."""
    states: list[LeadState] = []
    for group in range(store.keys.groups):
        keys: dict[str, None] = {}
        for tier in rules.tiers[1:]:
            for key, _ in await store.tier_queue(group, tier.name, size):
                keys[key] = None
        values = await store.load_values(list(keys))
        for key, raw in zip(keys, values, strict=True):
            if raw is None:  # moved or forgotten between the two reads
                continue
            try:
                states.append(decode_lead(split_value(raw)[1]))
            except StateCodecError as exc:
                log.warning("queue: lead value at %s cannot be decoded: %s", key, exc)
    return build_queue(states, rules, now_ms, size)
