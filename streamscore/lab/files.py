"""JSON-lines files of the lab: lead snapshots, outcomes and learning examples.

The worker integration fills the same values from Redis; these readers let `streamscore diff`
and `streamscore learn` run on exported files. Every error names the file and line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from streamscore.lab.diff import LeadOutcome, LeadSnapshot, Snapshot
from streamscore.lab.errors import LabInputError
from streamscore.lab.examples import Example

#: Outcome types (streamscore.outcomes) that mean the lead reached an opportunity: a deal won or
#: lost was one.
OPPORTUNITY_TYPES = frozenset({"opportunity_created", "won", "lost"})
OUTCOME_TYPES = frozenset(
    {"sales_accepted", "sales_rejected", "first_touch", "opportunity_created", "won", "lost"}
)
OUTCOMES = ("none", "opportunity", "won")


def json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line; LabInputError on anything else."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise LabInputError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise LabInputError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(value, dict):
                raise LabInputError(f"{path}:{number}: expected a JSON object")
            yield number, value


def _bad(path: Path, number: int, message: str) -> LabInputError:
    return LabInputError(f"{path}:{number}: {message}")


def _number(path: Path, number: int, record: dict[str, Any], key: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(path, number, f"{key!r} must be a finite number, got {value!r}")
    return float(value)


def _string(path: Path, number: int, record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(path, number, f"{key!r} must be a non-empty string, got {value!r}")
    return value


def read_snapshot(path: Path) -> Snapshot:
    """A snapshot file: an optional header line {"model", "rules_version", "tiers"}, then one
    line per lead {"lead_id", "tier", "score", "handed_off", "reasons": [[rule, points]...],
    "points": {rule: points}} (reasons and points optional). Without a header the model is the
    file's stem and tiers are ordered by their leads' mean score."""
    header: dict[str, Any] = {}
    leads: dict[str, LeadSnapshot] = {}
    for number, record in json_lines(path):
        if "lead_id" not in record:
            if header or leads:
                raise _bad(path, number, "a header line (no lead_id) must come first, once")
            header = record
            continue
        lead_id = _string(path, number, record, "lead_id")
        if lead_id in leads:
            raise _bad(path, number, f"lead {lead_id!r} appears twice")
        handed_off = record.get("handed_off", False)
        if not isinstance(handed_off, bool):
            raise _bad(path, number, f"'handed_off' must be true or false, got {handed_off!r}")
        try:
            reasons = tuple((str(r), float(p)) for r, p in record.get("reasons") or ())
            points = {str(r): float(p) for r, p in (record.get("points") or {}).items()}
        except (TypeError, ValueError, AttributeError):
            raise _bad(
                path, number, "'reasons' must be [[rule, points], ...], 'points' {rule: points}"
            ) from None
        leads[lead_id] = LeadSnapshot(
            lead_id,
            _string(path, number, record, "tier"),
            _number(path, number, record, "score"),
            handed_off,
            reasons,
            points,
        )
    tiers = header.get("tiers")
    if tiers is None:
        by_tier: dict[str, list[float]] = {}
        for lead in leads.values():
            by_tier.setdefault(lead.tier, []).append(lead.score)
        tiers = sorted(by_tier, key=lambda t: (sum(by_tier[t]) / len(by_tier[t]), t))
    if not isinstance(tiers, list) or not all(isinstance(t, str) for t in tiers):
        raise _bad(path, 1, "the header's 'tiers' must be a list of tier names, lowest first")
    return Snapshot(
        model=str(header.get("model", path.stem)),
        rules_version=str(header.get("rules_version", "?")),
        tiers=tuple(tiers),
        leads=leads,
    )


def read_outcomes(path: Path) -> dict[str, LeadOutcome]:
    """Outcomes per lead, from either form (mixed freely):
    {"lead_id", "opportunity": bool, "won": bool}, or outcome events {"lead_id", "type"} as on
    the outcomes topic (opportunity_created, won and lost mean an opportunity; won a won deal)."""
    found: dict[str, LeadOutcome] = {}
    for number, record in json_lines(path):
        lead_id = _string(path, number, record, "lead_id")
        if "type" in record:
            kind = record["type"]
            if kind not in OUTCOME_TYPES:
                raise _bad(path, number, f"unknown outcome type {kind!r}")
            opportunity, won = kind in OPPORTUNITY_TYPES, kind == "won"
        else:
            opportunity, won = record.get("opportunity", False), record.get("won", False)
            if not isinstance(opportunity, bool) or not isinstance(won, bool):
                raise _bad(path, number, "'opportunity' and 'won' must be true or false")
            opportunity = opportunity or won
        seen = found.get(lead_id, LeadOutcome(False, False))
        found[lead_id] = LeadOutcome(seen.opportunity or opportunity, seen.won or won)
    return found


def read_examples(path: Path) -> list[Example]:
    """Learning examples, one per line: {"lead_id", "features": {name: value}, "score",
    "outcome": "none" | "opportunity" | "won"} (names as streamscore.lab.examples.feature_name)."""
    examples: list[Example] = []
    for number, record in json_lines(path):
        features = record.get("features", {})
        if not isinstance(features, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in features.values()
        ):
            raise _bad(path, number, "'features' must map names to finite numbers")
        outcome = record.get("outcome", "none")
        if outcome not in OUTCOMES:
            raise _bad(path, number, f"'outcome' must be one of {', '.join(OUTCOMES)}")
        examples.append(
            Example(
                lead_id=_string(path, number, record, "lead_id"),
                features={str(k): float(v) for k, v in features.items()},
                score=_number(path, number, record, "score"),
                outcome=outcome,
            )
        )
    return examples
