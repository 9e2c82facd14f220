"""The rules file's optional `outcomes:` section: handoff SLAs, recycling, score bands, window.

```yaml
outcomes:
  sla: {hot: 1h, warm: 2d}          # first-touch deadline by tier at handoff; no entry, no SLA
  recycle: {action: disarm, rearm_below: 40}   # or {action: subtract, points: 30}
  score_bands: [80, 100, 120, 150]  # band edges of the score at handoff; default: deciles
  attribution_window: 90d           # an outcome before any handoff waits this long for one
```
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from streamscore.scoring.durations import parse_duration_s

#: Default attribution window: 90 days.
DEFAULT_ATTRIBUTION_WINDOW_S = 90 * 86400
#: The default score bands are fine buckets, grouped into deciles when KPIs are read: this many
#: buckets of DEFAULT_BAND_STEP points from the handoff tier's exit threshold up.
DEFAULT_FINE_BUCKETS = 75
DEFAULT_BAND_STEP = 2.0
MAX_SCORE_BANDS = 50

Loc = tuple[str | int, ...]
#: A positive duration in seconds, written 14d, 12h, 30m, 45s, 2w or as a number of seconds.
Duration = Annotated[float, BeforeValidator(parse_duration_s)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RecycleSpec(_Strict):
    """What a sales rejection does to the lead's scoring."""

    action: Literal["disarm", "subtract"]
    points: float | None = Field(default=None, gt=0)
    rearm_below: float | None = None

    @model_validator(mode="after")
    def _fields_fit_the_action(self) -> RecycleSpec:
        if self.action == "subtract" and self.points is None:
            raise ValueError("action subtract needs `points` (how many points to take off)")
        if self.action == "subtract" and self.rearm_below is not None:
            raise ValueError("rearm_below only applies to action disarm")
        if self.action == "disarm" and self.points is not None:
            raise ValueError("points only apply to action subtract")
        return self


class OutcomesSpec(_Strict):
    """The `outcomes:` section."""

    sla: dict[str, Duration] = {}
    recycle: RecycleSpec | None = None
    score_bands: list[float] | None = Field(default=None, min_length=1, max_length=MAX_SCORE_BANDS)
    attribution_window: float = DEFAULT_ATTRIBUTION_WINDOW_S

    @field_validator("attribution_window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> float:
        return parse_duration_s(value)

    @field_validator("score_bands")
    @classmethod
    def _increasing(cls, value: list[float] | None) -> list[float] | None:
        if value is not None:
            if not all(math.isfinite(edge) for edge in value):
                raise ValueError("band edges must be finite numbers")
            if any(b <= a for a, b in itertools.pairwise(value)):
                raise ValueError("band edges must rise strictly, e.g. [80, 100, 120]")
        return value


def check_outcomes(
    spec: OutcomesSpec | None, tiers: list[str], handoff_exit: float | None
) -> list[tuple[Loc, str]]:
    """Checks against the rest of the file: tier names and the recycle level."""
    if spec is None:
        return []
    problems: list[tuple[Loc, str]] = []
    for tier in spec.sla:
        if tier not in tiers:
            problems.append(
                (("outcomes", "sla", tier), f"{tier!r} is not a tier ({', '.join(tiers)})")
            )
    rearm = spec.recycle.rearm_below if spec.recycle else None
    if rearm is not None and handoff_exit is not None and rearm > handoff_exit:
        problems.append(
            (
                ("outcomes", "recycle", "rearm_below"),
                "must be <= the handoff tier's exit threshold, or the lead re-arms at once",
            )
        )
    return problems


@dataclass(frozen=True, slots=True)
class RecyclePolicy:
    """A compiled recycle action: `disarm` until the score falls below `rearm_below` and rises
    again, or `subtract` `points` as a penalty."""

    action: Literal["disarm", "subtract"]
    points: float
    rearm_below: float


@dataclass(frozen=True, slots=True)
class OutcomeRules:
    """The compiled `outcomes:` section (defaults when the file has none)."""

    tiers: tuple[str, ...]
    sla_ms: Mapping[str, int]
    recycle: RecyclePolicy | None
    band_edges: tuple[float, ...]
    #: True for the default fine buckets, which KPIs group into deciles; False for score_bands.
    fine_bands: bool
    attribution_window_ms: int

    def sla_deadline_ms(self, tier: str, handoff_ms: int) -> int | None:
        """The first-touch deadline of a handoff at `tier`, or None when the tier has no SLA."""
        sla = self.sla_ms.get(tier)
        return None if sla is None else handoff_ms + sla


def default_band_edges(handoff_exit: float) -> tuple[float, ...]:
    """Fine buckets of DEFAULT_BAND_STEP points from the lowest score a handoff can have."""
    start = math.floor(handoff_exit) if math.isfinite(handoff_exit) else 0.0
    return tuple(start + DEFAULT_BAND_STEP * i for i in range(DEFAULT_FINE_BUCKETS + 1))


def compile_outcomes(
    spec: OutcomesSpec | None, tiers: tuple[str, ...], handoff_exit: float, rearm_below: float
) -> OutcomeRules:
    """The OutcomeRules of a validated spec; `rearm_below` is the handoff's, the disarm default."""
    spec = spec or OutcomesSpec()
    recycle = None
    if spec.recycle is not None:
        r = spec.recycle
        recycle = RecyclePolicy(
            r.action,
            r.points or 0.0,
            rearm_below if r.rearm_below is None else r.rearm_below,
        )
    bands = spec.score_bands
    return OutcomeRules(
        tiers=tiers,
        sla_ms=MappingProxyType({t: round(s * 1000) for t, s in spec.sla.items()}),
        recycle=recycle,
        band_edges=tuple(bands) if bands else default_band_edges(handoff_exit),
        fine_bands=not bands,
        attribution_window_ms=round(spec.attribution_window * 1000),
    )
