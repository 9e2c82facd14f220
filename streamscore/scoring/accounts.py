"""Account roll-up (issue 14, part 4), pure: a lead's account, and an account's aggregate.

A lead's account is the `groupId` of its last Segment `group` call, else (when the rules'
`accounts.from_email` is on) the domain of its `email` trait, unless that domain is free mail
(FREE_MAIL, FREE_MAIL_PREFIXES, plus the rules' `accounts.free_mail`). A group call's account
wins over an email domain and is replaced only by another group call.

An account holds one contribution per member lead: the lead's engagement (its decayed positive
points) at the lead's present, the anchor. Its score at time t is its fit (points of the
`accounts.fit` rules whose conditions hold on the account's traits, i.e. its group calls'
traits) plus the sum of its best `top` members' engagement, each decayed from its anchor to t
with the account's own half-life. A contribution replaces the member's earlier one only when
its anchor is later (a tie: the larger value), and a trait only by a later group call (a tie:
the larger value in a fixed order), so the aggregate is a join of what arrived: the same
whatever the order, and a contribution applied twice is applied once.

The account is judged at its present (the latest anchor or trait time it has seen): its tier
with hysteresis, and a handoff when it reaches the handoff tier while armed and some member has
engagement (fit alone hands off no one); it re-arms below `rearm_below`. Ranking by value
decayed to any common time is one order (a common half-life), so the best members do not depend
on when they are judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import orjson

from streamscore.scoring.rules import AccountRules

#: Free-mail domains: an email there names a person, not a company.
FREE_MAIL = frozenset(
    (
        "gmail.com", "googlemail.com", "icloud.com", "me.com", "mac.com", "aol.com",
        "proton.me", "protonmail.com", "pm.me", "tutanota.com", "mail.com", "msn.com",
        "web.de", "t-online.de", "yandex.ru", "yandex.com", "mail.ru", "qq.com", "163.com",
        "126.com", "zoho.com", "fastmail.com", "hey.com", "orange.fr", "free.fr",
        "laposte.net", "libero.it", "btinternet.com", "comcast.net", "verizon.net", "att.net",
    )
)  # fmt: skip
#: Free-mail providers under any top-level domain (gmx.de, yahoo.co.uk, hotmail.fr, ...).
FREE_MAIL_PREFIXES = ("gmx.", "yahoo.", "ymail.", "hotmail.", "outlook.", "live.")

UpdateResult = Literal["applied", "stale"]
#: The engagement of a contribution that takes the lead out of the account (kind leave): it
#: wins a tie with a member contribution of the same anchor, and counts as nothing.
LEFT = -1.0


def email_domain(email: Any) -> str | None:
    """The lower-cased domain of an email address; None when it is not one."""
    if not isinstance(email, str):
        return None
    local, at, domain = email.strip().rpartition("@")
    domain = domain.lower().rstrip(".")
    if not at or not local or "." not in domain or " " in domain:
        return None
    return domain


def is_free_mail(domain: str, rules: AccountRules) -> bool:
    """Whether a domain is a free-mail provider's (built in, or the rules' free_mail)."""
    if domain in FREE_MAIL or domain in rules.free_mail:
        return True
    return domain.startswith(FREE_MAIL_PREFIXES) or (
        bool(rules.free_mail_prefixes) and domain.startswith(rules.free_mail_prefixes)
    )


def account_for(
    current: tuple[str, bool] | None,
    event_type: str,
    link: str | None,
    traits: Any,
    rules: AccountRules,
) -> tuple[str, bool] | None:
    """A lead's account after one of its events: (account id, from a group call), or None."""
    if event_type == "group" and link:
        return (link, True)
    if current is not None and current[1]:
        return current  # a group call's account stays until another group call
    if rules.from_email and traits:
        domain = email_domain(traits.get("email"))
        if domain is not None and not is_free_mail(domain, rules):
            return (domain, False)
    return current


class Contribution(NamedTuple):
    """What one lead sends its account: its engagement at its present (the anchor)."""

    account_id: str
    lead_id: str
    engagement: float
    anchor_ms: int
    #: A group call's traits (firmographics) and its time; empty for other events.
    traits: dict[str, Any] | None = None


class AccountHandoff(NamedTuple):
    """An account reached its handoff tier: who contributed, and how much."""

    account_id: str
    seq: int
    time_ms: int
    score: float
    tier: str
    engagement: float
    fit: float
    #: (lead id, engagement decayed to time_ms), best first: the members summed.
    leads: tuple[tuple[str, float], ...]


@dataclass(slots=True)
class AccountState:
    """One account's state, stored under the account's own key (store/keys.py)."""

    account_id: str
    #: lead id -> (engagement at its anchor, anchor ms).
    members: dict[str, tuple[float, int]] = field(default_factory=dict)
    #: trait key -> (value, time of the group call that set it).
    traits: dict[str, tuple[Any, int]] = field(default_factory=dict)
    #: The account's present: the latest anchor or trait time it has seen.
    last_ms: int | None = None
    tier: int = 0
    armed: bool = True
    #: Handoffs emitted; a handoff's id derives from (account id, seq).
    seq: int = 0


def _order(value: Any) -> bytes:
    """A fixed order on trait values, for ties between group calls at the same time."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return repr(value).encode()


def _newer(new: tuple[float, int], old: tuple[float, int]) -> bool:
    """Whether contribution `new` replaces `old`: a later anchor; at the same anchor a leave,
    else the larger engagement (a lead's late event only adds to it)."""
    if new[1] != old[1]:
        return new[1] > old[1]
    return (new[0] < 0, new[0]) > (old[0] < 0, old[0])


def _rank(member: tuple[float, int], half_life_ms: float) -> float:
    """A member's value on a time-independent scale: log2 of it decayed to time 0."""
    engagement, anchor = member
    if engagement <= 0:
        return -math.inf
    return math.log2(engagement) + anchor / half_life_ms


def best_members(
    state: AccountState, rules: AccountRules, t_ms: int
) -> tuple[tuple[str, float], ...]:
    """The `top` members with engagement, decayed to t_ms, best first (ties by lead id)."""
    h_ms = rules.half_life_s * 1000.0
    ranked = sorted(
        (m for m in state.members.items() if m[1][0] > 0),
        key=lambda m: (-_rank(m[1], h_ms), m[0]),
    )[: rules.top]
    return tuple((lead, e * 2.0 ** ((a - t_ms) / h_ms)) for lead, (e, a) in ranked)


def traits_of(state: AccountState) -> dict[str, Any]:
    """The account's traits as one document (what fit conditions read)."""
    return {key: value for key, (value, _) in state.traits.items()}


def fit_of(traits: dict[str, Any], rules: AccountRules) -> float:
    """Fit points of the account rules whose every condition holds on `traits`."""
    return sum(
        (r.points for r in rules.fit if all(test(read(traits)) for read, test in r.tests)), 0.0
    )


def score_at(state: AccountState, rules: AccountRules, t_ms: int) -> float:
    """The account's score at t_ms: fit plus its best members' decayed engagement."""
    engagement = sum((v for _, v in best_members(state, rules, t_ms)), 0.0)
    return fit_of(traits_of(state), rules) + engagement


def apply(
    state: AccountState,
    update: Contribution,
    rules: AccountRules,
    members_max: int,
    out: list[AccountHandoff],
) -> UpdateResult:
    """Take in one contribution; "stale" when it changes nothing (older, or seen)."""
    changed = False
    new = (update.engagement, update.anchor_ms)
    old = state.members.get(update.lead_id)
    if old is None or _newer(new, old):
        state.members[update.lead_id] = new
        changed = True
    if update.traits:
        for key, value in update.traits.items():
            have = state.traits.get(key)
            if have is None or (update.anchor_ms, _order(value)) > (have[1], _order(have[0])):
                state.traits[key] = (value, update.anchor_ms)
                changed = True
    if not changed:
        return "stale"
    if state.last_ms is None or update.anchor_ms > state.last_ms:
        state.last_ms = update.anchor_ms
    if len(state.members) > members_max:
        _trim(state, rules, members_max)
    evaluate(state, rules, out)
    return "applied"


def _trim(state: AccountState, rules: AccountRules, members_max: int) -> None:
    """Keep the best members_max members (the others come back with their next update)."""
    h_ms = rules.half_life_s * 1000.0
    ranked = sorted(state.members.items(), key=lambda m: (-_rank(m[1], h_ms), m[0]))
    state.members = dict(ranked[:members_max])


def evaluate(state: AccountState, rules: AccountRules, out: list[AccountHandoff]) -> None:
    """Judge the account at its present: tier with hysteresis, handoff, re-arm."""
    t = state.last_ms
    if t is None:
        return
    best = best_members(state, rules, t)
    fit = fit_of(traits_of(state), rules)
    engagement = sum((v for _, v in best), 0.0)
    score = fit + engagement
    tiers = rules.tiers
    tier = min(state.tier, len(tiers) - 1)
    while tier + 1 < len(tiers) and score >= tiers[tier + 1].enter:
        tier += 1
    while tier > 0 and score < tiers[tier].exit:
        tier -= 1
    state.tier = tier
    if not state.armed and score < rules.rearm_below:
        state.armed = True
    if state.armed and tier >= rules.handoff_tier and best:  # fit alone names no lead
        state.armed = False
        state.seq += 1
        out.append(
            AccountHandoff(
                state.account_id, state.seq, t, score, tiers[tier].name, engagement, fit, best
            )
        )


# ------------------------------------------------------------------ reference


def reference_score(
    account_id: str, updates: list[Contribution], rules: AccountRules, t_ms: int
) -> float:
    """Brute force: the account's score at t_ms from every contribution, in any order."""
    latest: dict[str, tuple[int, float]] = {}
    traits: dict[str, tuple[int, bytes, Any]] = {}
    for u in updates:
        if u.account_id != account_id:
            continue
        # The latest anchor; at the same anchor a leave, else the largest engagement.
        same = [(v.anchor_ms, v.engagement < 0, v.engagement) for v in updates
                if v.account_id == account_id and v.lead_id == u.lead_id]  # fmt: skip
        anchor, _, engagement = max(same)
        latest[u.lead_id] = (anchor, engagement)
        for key, value in (u.traits or {}).items():
            candidate = (u.anchor_ms, _order(value), value)
            if key not in traits or candidate[:2] > traits[key][:2]:
                traits[key] = candidate
    h_ms = rules.half_life_s * 1000.0
    values = sorted(
        (e * 2.0 ** ((a - t_ms) / h_ms) for a, e in latest.values() if e > 0), reverse=True
    )
    fit = fit_of({key: v for key, (_, _, v) in traits.items()}, rules)
    return fit + sum(values[: rules.top], 0.0)
