"""Applies one record to one cached lead: a scoring event, a sales outcome, or a tick.

The pipeline hands every record of a batch, in merge order, to the method of its kind; each
appends what it causes to the lead's key group's share of the batch (GroupWork): outputs
(handoffs, tier changes), records for other topics (SLA breaches), KPI counter deltas. All of it
is committed with the lead in one atomic call, so an outcome's attribution, its counters and
its effects happen exactly once in effect, like a score.

A handoff also opens the lead's funnel (outcomes/funnel.py): its snapshot is what later
outcomes are attributed to, and its tier's first-touch SLA starts. The SLA clock, like the decay
tick's "now" while the worker is behind, is the event time applied in the lead's partition, so
a replay breaches exactly what live processing did.

Identity merges (scoring/identity.py) are records too: an alias, or an identify with both ids,
makes the known lead send merge_into to the anonymous id's owner (the identity topic, keyed by
that id), which detaches the id's contributions and sends them back as absorb; later events of
a merged id are forwarded. Each is a Record in the commit's outbox entry, so it is sent exactly
once in effect with the state change that caused it.

Accounts (scoring/accounts.py) work the same way when the rules have an `accounts:` section: a
lead with an account whose engagement or account changed sends its contribution to the
account's owner (the account topic, keyed by account id), which applies it to the account's
own state in the same commit as its offset, and emits an account handoff through the outbox.
Rules without the section cost one attribute test per event.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from dataclasses import dataclass, field

from streamscore.events.accounts import AccountRecord, account_handoff_message, account_message
from streamscore.events.deadletter import dead_letter_record
from streamscore.events.envelope import Event
from streamscore.events.identity import (
    IdentityRecord,
    absorb_message,
    forward_message,
    merge_into_message,
)
from streamscore.events.outputs import output_id
from streamscore.outcomes.events import Outcome
from streamscore.outcomes.funnel import (
    EMPTY,
    Effect,
    Recycle,
    ScoreSnapshot,
    SlaBreach,
    apply_outcome,
    check_sla,
    from_wire,
    record_handoff,
    to_wire,
)
from streamscore.outcomes.messages import sla_breach_message
from streamscore.runtime.accounts import CachedAccount
from streamscore.runtime.clock import now_ms
from streamscore.runtime.lanes import Model
from streamscore.runtime.leads import CachedLead
from streamscore.scoring import accounts as acct
from streamscore.scoring import story
from streamscore.scoring.engine import decide
from streamscore.scoring.identity import absorb, detach, judge, note_event, request
from streamscore.scoring.outputs import Output
from streamscore.scoring.rules import AccountRules, CompiledRules
from streamscore.scoring.state import (
    LeadState,
    advance,
    apply_event,
    contributions_at,
    disarm,
    engagement_at,
    penalize,
    score_at,
)
from streamscore.scoring.story import StoryKind
from streamscore.store.codec import decode_lead, encode_lead
from streamscore.store.outbox import Record

log = logging.getLogger(__name__)

#: The penalty rule a `subtract` recycle books its points under (shown in explanations).
RECYCLE_RULE = "sales_rejected"


@dataclass(slots=True)
class GroupWork:
    """One key group's share of a batch while it is scored."""

    leads: dict[str, CachedLead] = field(default_factory=dict)
    #: Accounts written by this group's share (their own keys, in the same commit call).
    accounts: dict[str, CachedAccount] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)
    #: Messages for other topics, recorded in the outbox with the outputs.
    records: list[Record] = field(default_factory=list)
    #: KPI counter increments, applied in the same commit call.
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Facts:
    """What a batch did beyond scoring, counted once its commit calls have succeeded."""

    outcomes: Tally[tuple[str, str]] = field(default_factory=Tally)  # (type, result)
    breaches: Tally[str] = field(default_factory=Tally)  # tier
    #: Cross-lead work (Sensor.edges_applied): ("identity", result), ("forwarded", ""),
    #: ("account_member" | "account_leave", result), ("account_handoff", tier).
    edges: Tally[tuple[str, str]] = field(default_factory=Tally)


class Scorer:
    """The per-record rules of the worker, shared by batches and ticks."""

    def __init__(
        self,
        dedup_window_ms: int,
        story_keep: int,
        sla_topic: str,
        identity_topic: str = "ss.v1.internal.identity",
        dead_letter_topic: str = "ss.v1.dead-letter",
        merge_known: bool = False,
        max_links: int = 100,
        account_topic: str = "ss.v1.internal.accounts",
        account_handoff_topic: str = "ss.v1.account-handoffs",
        account_members_max: int = 200,
    ) -> None:
        self.dedup_ms = dedup_window_ms
        self.story_keep = story_keep
        self.sla_topic = sla_topic
        self.identity_topic = identity_topic
        self.dead_letter_topic = dead_letter_topic
        self.merge_known = merge_known
        self.max_links = max_links
        self.account_topic = account_topic
        self.account_handoff_topic = account_handoff_topic
        self.account_members_max = account_members_max

    def event(
        self,
        lead: CachedLead,
        ev: Event,
        clock_ms: int,
        w: GroupWork,
        model: Model,
        facts: Facts,
    ) -> bool:
        """Score one event; False when its id was seen within the dedup window.

        An event of an id merged into another lead is forwarded there instead.
        """
        rules = model.rules
        cross = model.cross_lead
        state = lead.state
        ident = state.identity
        if cross and ident is not None and ident.merged_into is not None:
            key, value = forward_message(ident.merged_into, state.lead_id, ev)
            w.records.append(Record(self.identity_topic, key, value))
            facts.edges[("forwarded", "")] += 1
            return True
        note_event(state, ev.anonymous)
        first = len(w.outputs)
        # Cross-lead effects (identity merges, account roll-ups) belong to the live lane only:
        # a shadow model or a replay scores each id on its own.
        accounts = rules.accounts if cross else None
        before = (state.anchor_ms, state.positive) if accounts is not None else None
        fresh = apply_event(
            state, rules, ev.event_id, ev.time_ms, decide(ev, rules), self.dedup_ms, w.outputs
        )
        if fresh:
            if accounts is not None:
                changed = before != (state.anchor_ms, state.positive)
                self._contribute(state, rules, accounts, ev, changed, w)
            self._tell(state, rules, ev.time_ms, "event", ev.type)
            if len(w.outputs) > first:
                self._after_outputs(lead, w, first, model, clock_ms, facts)
            link = ev.link
            if cross and link is not None and ev.type != "group" and link != state.lead_id:
                self._link(state, link, ev, w, facts)
        return fresh

    def identity(
        self,
        lead: CachedLead,
        record: IdentityRecord,
        source: tuple[str, int, int],
        clock_ms: int,
        w: GroupWork,
        model: Model,
        facts: Facts,
    ) -> None:
        """Apply one identity record; `source` is its (topic, partition, offset)."""
        if record.type == "event":
            assert record.event is not None  # parse_identity builds it
            self.event(lead, record.event, clock_ms, w, model, facts)
        elif record.type == "merge_into":
            self._merge_into(lead, record, source, clock_ms, w, model.rules, facts)
        else:
            self._absorb(lead, record, clock_ms, w, model, facts)

    def _link(self, state: LeadState, other: str, ev: Event, w: GroupWork, facts: Facts) -> None:
        """The known lead names another id: ask that id's owner to merge it, once."""
        result = request(state, other, ev.time_ms, self.max_links)
        if result == "linked":
            return
        facts.edges[("identity", result)] += 1
        if result == "requested":
            key, value = merge_into_message(other, state.lead_id, ev.event_id, ev.time_ms)
            w.records.append(Record(self.identity_topic, key, value))
        else:
            log.warning(
                "not merging %r into %r: the lead has identity_max_links (%d) ids already",
                other, state.lead_id, self.max_links,
            )  # fmt: skip

    def _merge_into(
        self,
        lead: CachedLead,
        record: IdentityRecord,
        source: tuple[str, int, int],
        clock_ms: int,
        w: GroupWork,
        rules: CompiledRules,
        facts: Facts,
    ) -> None:
        """The id's owner: detach its contributions for the known lead, or refuse."""
        state = lead.state
        into = record.other
        verdict = judge(state, into, self.merge_known)
        if verdict == "duplicate":
            return
        if verdict == "merge":
            taken = detach(state, into)
            key, value = absorb_message(
                into, state.lead_id, record.event_id, record.time_ms, encode_lead(taken)
            )
            w.records.append(Record(self.identity_topic, key, value))
            self._tell(state, rules, record.time_ms, "merge", f"into {into}")
            return
        facts.edges[("identity", verdict)] += 1
        why = {
            "refused_known": "it is a known lead (it has been a userId) and "
            "identity_merge_known is refuse",
            "refused_taken": "it was merged into another lead already",
            "refused_cycle": "the lead to merge into was merged into it",
        }[verdict]
        detail = f"{verdict}: not merging {state.lead_id!r} into {into!r}: {why}"
        topic, partition, offset = source
        log.warning("%s[%d]@%d: %s", topic, partition, offset, detail)
        _, raw = merge_into_message(state.lead_id, into, record.event_id, record.time_ms)
        value = dead_letter_record(raw, "merge_refused", detail, topic, partition, offset, clock_ms)
        w.records.append(Record(self.dead_letter_topic, _lead_key(state.lead_id), value))

    def _absorb(
        self,
        lead: CachedLead,
        record: IdentityRecord,
        clock_ms: int,
        w: GroupWork,
        model: Model,
        facts: Facts,
    ) -> None:
        """The known lead takes in a merged id's contributions, once."""
        assert record.state is not None  # parse_identity requires it
        rules = model.rules
        state = lead.state
        first = len(w.outputs)
        other = decode_lead(record.state, record.other)
        if absorb(state, other, record.other, rules, record.event_id, record.time_ms, w.outputs):
            facts.edges[("identity", "merged")] += 1
            if rules.accounts is not None and state.account is not None:
                self._contribute(state, rules, rules.accounts, None, True, w)
            self._tell(state, rules, record.time_ms, "merge", record.other)
            if len(w.outputs) > first:
                self._after_outputs(lead, w, first, model, clock_ms, facts)

    def _contribute(
        self,
        state: LeadState,
        rules: CompiledRules,
        accounts: AccountRules,
        ev: Event | None,
        changed: bool,
        w: GroupWork,
    ) -> None:
        """Send the lead's contribution to its account when it or the account changed."""
        current = state.account
        traits = None
        new = current
        if ev is not None:
            new = acct.account_for(current, ev.type, ev.link, ev.traits, accounts)
            if ev.type == "group" and ev.traits:
                traits = dict(ev.traits)
        anchor = state.last_ms if state.last_ms is not None else 0
        if new != current:
            if current is not None and (new is None or new[0] != current[0]):
                leave = acct.Contribution(current[0], state.lead_id, acct.LEFT, anchor)
                w.records.append(Record(self.account_topic, *account_message(leave)))
            state.account = new
            changed = True
        if new is None or not (changed or traits):
            return
        engagement = engagement_at(state, rules, anchor)
        update = acct.Contribution(new[0], state.lead_id, engagement, anchor, traits)
        w.records.append(Record(self.account_topic, *account_message(update)))

    def account(
        self,
        account: CachedAccount,
        record: AccountRecord,
        w: GroupWork,
        rules: CompiledRules,
        facts: Facts,
    ) -> None:
        """Apply one lead's contribution to its account, once; hand the account off."""
        kind = "account_leave" if record.type == "leave" else "account_member"
        accounts = rules.accounts
        if accounts is None:
            facts.edges[(kind, "ignored")] += 1
            return
        handoffs: list[acct.AccountHandoff] = []
        result = acct.apply(
            account.state, record.contribution, accounts, self.account_members_max, handoffs
        )
        facts.edges[(kind, result)] += 1
        if handoffs:
            traits = acct.traits_of(account.state)
            scored = now_ms()
            for h in handoffs:
                key, value = account_handoff_message(h, traits, rules.version, scored)
                w.records.append(Record(self.account_handoff_topic, key, value))
                facts.edges[("account_handoff", h.tier)] += 1

    def outcome(
        self,
        lead: CachedLead,
        outcome: Outcome,
        clock_ms: int,
        w: GroupWork,
        model: Model,
        facts: Facts,
    ) -> None:
        """Attribute one sales outcome to the lead's handoffs, once; apply its effects."""
        rules = model.rules
        state = lead.state
        funnel = from_wire(state.funnel) if state.funnel else EMPTY
        known = state.last_ms is not None  # an outcome may come for a lead never scored
        snapshot = self._snapshot(state, model) if known else None
        after, deltas, effects = apply_outcome(funnel, outcome, snapshot, rules.outcomes, clock_ms)
        duplicate = after.duplicates > funnel.duplicates
        overflow = after.overflow > funnel.overflow
        facts.outcomes[
            (
                outcome.type.value,
                "duplicate" if duplicate else "overflow" if overflow else "applied",
            )
        ] += 1
        state.funnel = to_wire(after) or None
        _add(w.counters, deltas)
        if not duplicate:
            self._tell(state, rules, outcome.time_ms, "outcome", outcome.type.value)
        self._effects(lead, effects, outcome.outcome_id, w, model, clock_ms, facts)

    def tick(
        self,
        lead: CachedLead,
        until_ms: int,
        w: GroupWork,
        model: Model,
        facts: Facts,
    ) -> None:
        """Inactivity drops due by `until_ms`, and SLA breaches due by then."""
        rules = model.rules
        state = lead.state
        first = len(w.outputs)
        advance(state, rules, until_ms, w.outputs)
        if len(w.outputs) > first:
            self._after_outputs(lead, w, first, model, until_ms, facts)
        if state.funnel:
            funnel = from_wire(state.funnel)
            after, deltas, effects = check_sla(funnel, rules.outcomes, until_ms)
            if after is not funnel:
                state.funnel = to_wire(after) or None
                _add(w.counters, deltas)
                self._effects(lead, effects, "", w, model, until_ms, facts)

    # ------------------------------------------------------------------ shared

    def _after_outputs(
        self,
        lead: CachedLead,
        w: GroupWork,
        first: int,
        model: Model,
        clock_ms: int,
        facts: Facts | None,
    ) -> None:
        """Tell the new outputs, and open the funnel of each handoff among them."""
        rules = model.rules
        state = lead.state
        for out in w.outputs[first:]:
            if self.story_keep:
                kind: StoryKind = (
                    "handoff"
                    if out.kind == "handoff"
                    else "decay"
                    if out.cause == "decay"
                    else "tier"
                )
                story.record(state, out.time_ms, kind, out.new_tier, out.score, self.story_keep)
            if out.kind != "handoff":
                continue
            features = tuple(
                (rule, round(points, 6))
                for rule, points in contributions_at(state, rules, out.time_ms)
            )
            snapshot = ScoreSnapshot(
                out.score, out.new_tier, out.grade, out.bant_mask, out.rules_version,
                model.name, output_id(out.lead_id, out.seq), out.time_ms, features,
            )  # fmt: skip
            funnel = from_wire(state.funnel) if state.funnel else EMPTY
            after, deltas, effects = record_handoff(
                funnel, snapshot, rules.outcomes, max(clock_ms, out.time_ms)
            )
            state.funnel = to_wire(after) or None
            _add(w.counters, deltas)
            self._effects(lead, effects, "", w, model, clock_ms, facts)

    def _effects(
        self,
        lead: CachedLead,
        effects: tuple[Effect, ...],
        cause_id: str,
        w: GroupWork,
        model: Model,
        clock_ms: int,
        facts: Facts | None,
    ) -> None:
        state = lead.state
        for effect in effects:
            if isinstance(effect, SlaBreach):
                key, value = sla_breach_message(state.lead_id, effect, clock_ms)
                w.records.append(Record(self.sla_topic, key, value))
                if facts is not None:
                    facts.breaches[effect.tier] += 1
                self._tell(state, model.rules, clock_ms, "sla", effect.tier)
            elif isinstance(effect, Recycle):
                self._recycle(lead, effect, cause_id, w, model, clock_ms, facts)

    def _recycle(
        self,
        lead: CachedLead,
        effect: Recycle,
        cause_id: str,
        w: GroupWork,
        model: Model,
        clock_ms: int,
        facts: Facts | None,
    ) -> None:
        rules = model.rules
        state = lead.state
        if effect.action == "disarm":
            disarm(state, effect.rearm_below)
        else:
            first = len(w.outputs)
            penalize(state, rules, RECYCLE_RULE, effect.points, effect.time_ms, cause_id, w.outputs)
            if len(w.outputs) > first:
                self._after_outputs(lead, w, first, model, clock_ms, facts)
        self._tell(state, rules, effect.time_ms, "recycle", effect.action)

    def _tell(
        self, state: LeadState, rules: CompiledRules, time_ms: int, kind: StoryKind, label: str
    ) -> None:
        if self.story_keep:
            last = state.last_ms if state.last_ms is not None else time_ms
            story.record(state, time_ms, kind, label, score_at(state, rules, last), self.story_keep)

    @staticmethod
    def _snapshot(state: LeadState, model: Model) -> ScoreSnapshot:
        rules = model.rules
        last = state.last_ms if state.last_ms is not None else 0
        tier = rules.tiers[min(state.tier, len(rules.tiers) - 1)].name
        return ScoreSnapshot(
            score_at(state, rules, last), tier, rules.grade_of(state.fit), state.bant,
            rules.version, model.name,
        )  # fmt: skip


def _lead_key(lead_id: str) -> bytes:
    return lead_id.encode("utf-8", "surrogateescape")


def _add(total: dict[str, int], deltas: dict[str, int]) -> None:
    for name, n in deltas.items():
        if n:
            total[name] = total.get(name, 0) + n
