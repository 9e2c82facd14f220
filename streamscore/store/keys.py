"""Every Redis key is built here; lead ids are hashed so they cannot inject keys."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass


@functools.lru_cache(maxsize=65_536)
def _digest(lead_id: str) -> tuple[int, str]:
    # Active leads recur batch after batch (activity is Zipf-like), so the hash is cached.
    raw = hashlib.blake2b(lead_id.encode("utf-8", "surrogatepass"), digest_size=12).digest()
    return int.from_bytes(raw[:4], "big"), raw.hex()


@dataclass(frozen=True, slots=True)
class LeadRef:
    """A lead's hashed identity: its key group and digest."""

    group: int
    digest: str


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Key builder for one prefix (e.g. ss:v1) split into `groups` hash-tagged groups.

    Every key of a group carries the hash tag {gN}, so one script call that touches one group
    stays within one Redis Cluster slot. The forgotten sets may sit under another prefix
    (`forgotten_prefix`, the live one's for a replay into its own prefix): the hash tag is the
    same, so they stay in the group's slot, and a forget holds for every prefix that shares it.
    """

    prefix: str
    groups: int = 1
    forgotten_prefix: str = ""

    def lead_ref(self, lead_id: str) -> LeadRef:
        """Hash a lead id (any characters) to its group and digest."""
        head, digest = _digest(lead_id)
        return LeadRef(head % self.groups, digest)

    def _tag(self, group: int) -> str:
        return f"{self.prefix}:{{g{group}}}"

    def lead(self, ref: LeadRef) -> str:
        """String with the lead's state: its write version, then the encoded LeadState."""
        return f"{self._tag(ref.group)}:lead:{ref.digest}"

    def offsets(self, group: int) -> str:
        """Hash of the last applied offset per topic-partition."""
        return f"{self._tag(group)}:offsets"

    def due(self, group: int, partition: int) -> str:
        """Sorted set of lead keys by the time of their next inactivity tier drop.

        One per input partition number, so that a worker ticks only the leads it owns.
        """
        return f"{self._tag(group)}:due:{partition}"

    def sla_due(self, group: int, partition: int) -> str:
        """Sorted set of lead keys by when their next first-touch SLA deadline passes."""
        return f"{self._tag(group)}:sla:{partition}"

    def tier_index(self, group: int, tier: str) -> str:
        """Sorted set of the group's leads in `tier` (above the first), by score: the queue."""
        return f"{self._tag(group)}:tier:{tier}"

    def kpi(self, group: int) -> str:
        """Hash of additive KPI counters (outcomes, handoffs), summed over groups by readers."""
        return f"{self._tag(group)}:kpi"

    def outbox(self, group: int) -> str:
        """Stream of outputs recorded but not yet acknowledged by the broker."""
        return f"{self._tag(group)}:outbox"

    def forgotten(self, group: int) -> str:
        """Set of the group's forgotten leads ("digest@forget ms"): their older records are
        dropped."""
        return f"{self.forgotten_prefix or self.prefix}:{{g{group}}}:forgotten"

    def account_ref(self, account_id: str) -> LeadRef:
        """Hash an account id to its group and digest (accounts share the leads' groups)."""
        head, digest = _digest(f"\x00account\x00{account_id}")
        return LeadRef(head % self.groups, digest)

    def account(self, ref: LeadRef) -> str:
        """String with an account's state: its write version, then the encoded AccountState."""
        return f"{self._tag(ref.group)}:acct:{ref.digest}"

    def digest_of(self, lead_key: str) -> str:
        """The digest at the end of a lead key (what the forgotten set holds)."""
        return lead_key.rpartition(":")[2]
