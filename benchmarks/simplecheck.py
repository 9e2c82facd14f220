"""Check a run of the simple job against the reference: per-lead scores and the set of handoffs.

Each run leaves its state where it keeps it (streamscore's and (c)'s in Redis, (q)'s in its
RocksDB store) and its handoffs on its own topic; the readers here turn both into the
reference's terms: a score at the lead's last event time, and (lead id, triggering event id).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from benchmarks.simple_reference import Expected, LeadScore
from benchmarks.statecheck import read_scores
from streamscore.scoring.rules import CompiledRules
from streamscore.store.keys import KeySpace

REL_TOL = 1e-6
#: Scores near zero (an unsubscribe cancelling the awards) need an absolute floor.
ABS_TOL = 1e-9
QUIX_LEAD_KEY = b'|"lead"'


@dataclass
class RunOutcome:
    """What a run left: per-lead scores and its handoffs."""

    scores: dict[str, LeadScore]
    handoffs: set[tuple[str, str]]
    handoff_records: int  # records on the topic; more than len(handoffs) means duplicates


def parse_handoffs(values: list[bytes]) -> tuple[set[tuple[str, str]], int]:
    """(lead id, triggering event id) of each handoff message, and the message count."""
    found = set()
    for value in values:
        body = orjson.loads(value)
        found.add((str(body["lead_id"]), str(body["triggering_event_id"])))
    return found, len(values)


def minimal_loop_scores(client: redis.Redis, prefix: str) -> dict[str, LeadScore]:
    """(c)'s lead hashes: s is the score at t."""
    out: dict[str, LeadScore] = {}
    head = f"{prefix}:lead:"
    keys = [k.decode() for k in client.scan_iter(match=f"{head}*", count=5000)]
    for i in range(0, len(keys), 2000):
        chunk = keys[i : i + 2000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.hmget(key, "s", "t")
        for key, (s, t) in zip(chunk, pipe.execute(), strict=True):
            out[key.removeprefix(head)] = LeadScore(float(s), int(t))
    return out


def quix_scores(state_dir: Path) -> dict[str, LeadScore]:
    """(q)'s default store, read from every partition's RocksDB once the app has stopped."""
    from rocksdict import AccessType, Options, Rdict

    out: dict[str, LeadScore] = {}
    for part in sorted(state_dir.glob("*/default/*/*")):
        if not (part / "CURRENT").exists():
            continue
        db = Rdict(str(part), access_type=AccessType.read_only(), options=Options(raw_mode=True))
        try:
            for key, value in db.items():
                if isinstance(key, bytes) and key.endswith(QUIX_LEAD_KEY):
                    s, t, _armed = orjson.loads(value)
                    out[key[: -len(QUIX_LEAD_KEY)].decode()] = LeadScore(float(s), int(t))
        finally:
            db.close()
    return out


def worker_scores(
    client: redis.Redis, keyspace: KeySpace, rules: CompiledRules
) -> dict[str, LeadScore]:
    """streamscore's lead states, each scored at its last evaluation by the engine's score_at."""
    return {
        lead: LeadScore(state.score, state.lt)
        for lead, state in read_scores(client, keyspace, rules).items()
    }


@dataclass
class Check:
    """How a run's outcome differs from the reference."""

    run: str
    leads_expected: int
    leads_got: int
    missing_leads: int = 0
    extra_leads: int = 0
    score_mismatches: int = 0
    time_mismatches: int = 0
    max_rel_diff: float = 0.0
    handoffs_expected: int = 0
    handoffs_got: int = 0
    missing_handoffs: int = 0
    extra_handoffs: int = 0
    duplicate_handoffs: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Same leads, scores and times, and the same set of handoffs."""
        return not (
            self.missing_leads
            or self.extra_leads
            or self.score_mismatches
            or self.time_mismatches
            or self.missing_handoffs
            or self.extra_handoffs
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**asdict(self), "ok": self.ok}


def check(run: str, expected: Expected, got: RunOutcome, max_examples: int = 5) -> Check:
    """Compare scores within REL_TOL (ABS_TOL near zero) and the handoff sets exactly."""
    result = Check(run, len(expected.scores), len(got.scores))
    result.missing_leads = len(expected.scores.keys() - got.scores.keys())
    result.extra_leads = len(got.scores.keys() - expected.scores.keys())
    for lead_id, want in expected.scores.items():
        have = got.scores.get(lead_id)
        if have is None:
            continue
        scale = max(abs(want.score), abs(have.score))
        if scale > 0:
            result.max_rel_diff = max(result.max_rel_diff, abs(want.score - have.score) / scale)
        bad_score = not math.isclose(want.score, have.score, rel_tol=REL_TOL, abs_tol=ABS_TOL)
        bad_time = want.time_ms != have.time_ms
        result.score_mismatches += bad_score
        result.time_mismatches += bad_time
        if (bad_score or bad_time) and len(result.examples) < max_examples:
            result.examples.append(
                {"lead_id": lead_id, "reference": want._asdict(), run: have._asdict()}
            )
    result.handoffs_expected = len(expected.handoffs)
    result.handoffs_got = len(got.handoffs)
    missing = expected.handoffs - got.handoffs
    extra = got.handoffs - expected.handoffs
    result.missing_handoffs = len(missing)
    result.extra_handoffs = len(extra)
    result.duplicate_handoffs = got.handoff_records - len(got.handoffs)
    for kind, pairs in (("missing handoff", missing), ("extra handoff", extra)):
        for lead_id, event_id in sorted(pairs)[: max(max_examples - len(result.examples), 0)]:
            result.examples.append({kind: {"lead_id": lead_id, "event_id": event_id}})
    return result
