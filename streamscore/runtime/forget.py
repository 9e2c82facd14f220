"""Forget a lead (`streamscore forget`, DELETE /leads/{id}): gone from Redis, a tombstone out.

One commit.lua call in the lead's key group, fenced on the lead's value like any write, does it
all at once: the lead's value (its state, with its event-id de-duplication) is deleted, the key
leaves the group's sorted sets (due, SLA, tier indexes), its pending outputs are taken out of the
outbox, "digest@forget ms" joins the group's forgotten set, and the tombstone is recorded in the
outbox. A worker that scored a batch without this forget cannot commit it (the set's size is its
fence): it re-reads, and from then on drops the lead's records up to the forget time. The
tombstone is then sent and acknowledged; if that fails, the worker's outbox re-drive sends it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from streamscore.errors import StreamscoreError
from streamscore.events.forgotten import ForgetResult, tombstone_message
from streamscore.store.codec import decode_lead
from streamscore.store.commit import DeleteWrite, GroupCommit, OutboxRewrite, prefix_of, split_value
from streamscore.store.forgotten import member, parse_member, without_lead
from streamscore.store.outbox import Record, encode_outputs
from streamscore.store.store import RedisStore

log = logging.getLogger(__name__)

#: Tries when the lead keeps changing under the forget (the worker scoring it meanwhile).
FORGET_ATTEMPTS = 8


class ForgetConflict(StreamscoreError):
    """The lead changed under every attempt to forget it; nothing was deleted."""


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What one forget did."""

    lead_id: str
    result: ForgetResult
    forget_ms: int
    withdrawn: int  # pending outputs and records of the lead taken out of the outbox
    group: int
    outbox_entry: str  # the tombstone's entry, until it is acknowledged
    tombstone: Record


async def forget_lead(
    store: RedisStore,
    lead_id: str,
    *,
    topic: str,
    tier_names: Sequence[str],
    forget_ms: int,
    reason: str | None = None,
) -> Forgotten:
    """Delete a lead and record it as forgotten at `forget_ms`, atomically; the tombstone waits
    in the outbox (send it with `send_tombstone`).

    `tier_names` are the rules' tiers: the lead leaves each tier index but the first's (which
    is not indexed).
    """
    keys = store.keys
    ref = keys.lead_ref(lead_id)
    group, key = ref.group, keys.lead(ref)
    for _ in range(FORGET_ATTEMPTS):
        raw = await store.read_lead(lead_id)
        sets: list[str] = []
        if raw is None:
            before = {parse_member(m)[0] for m in await store.forgotten_members(group)}
            result: ForgetResult = "already_forgotten" if ref.digest in before else "not_found"
        else:
            result = "forgotten"
            partition = decode_lead(split_value(raw)[1], lead_id).partition
            sets = [keys.tier_index(group, name) for name in tier_names[1:]]
            if partition is not None:
                sets += [keys.due(group, partition), keys.sla_due(group, partition)]
        withdrawals = without_lead(await store.outbox_entries(group), lead_id)
        withdrawn = sum(w.withdrawn for w in withdrawals)
        tombstone = Record(topic, *tombstone_message(lead_id, forget_ms, result, withdrawn, reason))
        commit = GroupCommit(group)
        commit.deletes.append(
            DeleteWrite(key, prefix_of(raw), member(ref.digest, forget_ms), tuple(sets))
        )
        commit.rewrites += [OutboxRewrite(w.entry_id, w.replacement) for w in withdrawals]
        reply = await store.commit(commit.pack(keys), encode_outputs([], forget_ms, [tombstone]))
        if reply.ok:
            return Forgotten(
                lead_id, result, forget_ms, withdrawn, group, reply.outbox_entry, tombstone
            )
        log.info("forget of a lead in group %d met a concurrent write (%s); again", group,
                 reply.conflict)  # fmt: skip
    raise ForgetConflict(
        f"the lead changed under each of {FORGET_ATTEMPTS} attempts to forget it; nothing was "
        "deleted: try again"
    )


async def send_tombstone(
    store: RedisStore, producer: AIOKafkaProducer, forgotten: Forgotten
) -> None:
    """Send the tombstone, wait for the broker, then take it out of the outbox.

    A failure leaves it in the outbox, where the worker's re-drive finds it: raise, so the
    caller can say so.
    """
    record = forgotten.tombstone
    await producer.send_and_wait(record.topic, record.value, key=record.key)
    await store.ack_outbox(forgotten.group, [forgotten.outbox_entry])
