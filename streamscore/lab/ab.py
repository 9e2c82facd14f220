"""A/B assignment: a lead id goes to one arm of an experiment, by a salted hash, with weights.

The assignment is weighted rendezvous hashing (highest random weight): each arm draws a uniform
u = BLAKE2b(key=experiment, arm + NUL + lead id) in (0, 1], and the lead goes to the arm with the
largest ln(u) / weight. Then P(arm) = weight / sum(weights) exactly, the draw of an arm never
depends on the other arms, and so changing one arm's weight moves only the leads that must move:
raising it pulls leads into that arm alone (none move between the other arms), lowering it sends
only its own leads away, adding an arm takes leads only into the new arm, and removing one
redistributes only its leads. Salting by the experiment name makes two experiments independent.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamscore.lab.errors import ExperimentError
from streamscore.outcomes.kpi import MODEL_NAME
from streamscore.scoring.source_lines import line_index

#: Arm names become the `model` label of metrics and KPIs: the outcomes module's model names.
ARM_NAME = MODEL_NAME
#: BLAKE2b keys are at most 64 bytes; the experiment name is the key.
MAX_EXPERIMENT_NAME = 64
_TWO_53 = float(1 << 53)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmSpec(_Strict):
    """One arm: the rules file it scores with and its share of the leads."""

    rules: str = Field(min_length=1)
    weight: float = Field(ge=0, allow_inf_nan=False)


class ExperimentSpec(_Strict):
    """An experiment file: its name (the hash salt) and its arms."""

    experiment: str = Field(
        min_length=1, max_length=MAX_EXPERIMENT_NAME, pattern=r"^[A-Za-z0-9_.:+-]+$"
    )
    arms: dict[str, ArmSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _some_weight(self) -> ExperimentSpec:
        if not any(arm.weight > 0 for arm in self.arms.values()):
            raise ValueError("at least one arm needs a weight above 0")
        return self


@dataclass(frozen=True, slots=True)
class Arm:
    """A validated arm; `rules` is resolved against the experiment file's directory."""

    name: str
    rules: Path
    weight: float


@dataclass(frozen=True, slots=True)
class Experiment:
    """A validated experiment: assign leads with `assign_arm(experiment, lead_id)`."""

    name: str
    arms: tuple[Arm, ...]

    @property
    def weights(self) -> dict[str, float]:
        """Arm name -> weight."""
        return {arm.name: arm.weight for arm in self.arms}

    def share(self, arm: str) -> float:
        """The expected share of leads in `arm`."""
        total = sum(a.weight for a in self.arms)
        return self.weights[arm] / total


def arm_draw(experiment: str, arm: str, lead_id: str) -> float:
    """The arm's uniform draw for a lead, in (0, 1]; independent across arms and experiments."""
    digest = hashlib.blake2b(
        f"{arm}\x00{lead_id}".encode(), digest_size=8, key=experiment.encode()
    ).digest()
    top53 = int.from_bytes(digest, "big") >> 11
    return (top53 + 1) / _TWO_53


def assign(experiment: str, weights: Mapping[str, float], lead_id: str) -> str:
    """The arm of `lead_id`: weighted rendezvous hashing over arms with a weight above 0."""
    best_arm = ""
    best_key = -math.inf
    # Sorted, so that a tie (vanishingly rare) goes to the same arm whatever the mapping's order.
    for arm in sorted(weights):
        weight = weights[arm]
        if weight <= 0:
            continue
        key = math.log(arm_draw(experiment, arm, lead_id)) / weight
        if key > best_key:
            best_arm, best_key = arm, key
    if not best_arm:
        raise ValueError("no arm has a weight above 0")
    return best_arm


def assign_arm(experiment: Experiment, lead_id: str) -> str:
    """The arm of `lead_id` in a validated experiment."""
    return assign(experiment.name, experiment.weights, lead_id)


# ---------------------------------------------------------------- the experiment file


def parse_experiment_text(text: str, source: str, base_dir: Path | None = None) -> Experiment:
    """Validate an experiment file's text; raise ExperimentError listing every located problem.

    ```yaml
    experiment: pricing-weights-2026-11   # the hash salt: a new name reshuffles every lead
    arms:
      live:      {rules: rules.yaml, weight: 80}
      candidate: {rules: candidate.yaml, weight: 20}
    ```
    """
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ExperimentError(source, [f"{where}: not valid YAML: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise ExperimentError(source, [f"not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ExperimentError(source, ["top level must be a mapping (experiment, arms)"])
    problems: list[tuple[tuple[str | int, ...], str]] = []
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        problems = [
            (
                tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p)),
                err["msg"].removeprefix("Value error, "),
            )
            for err in exc.errors()
        ]
        raise ExperimentError(source, _locate(problems, text)) from None
    for name in spec.arms:
        if not re.match(ARM_NAME, name):
            problems.append(
                (("arms", name), f"arm name {name!r} must match {ARM_NAME} (it is a metric label)")
            )
    if problems:
        raise ExperimentError(source, _locate(problems, text))
    base = base_dir if base_dir is not None else Path(".")
    arms = tuple(Arm(name, base / arm.rules, arm.weight) for name, arm in sorted(spec.arms.items()))
    return Experiment(spec.experiment, arms)


def load_experiment(path: Path) -> Experiment:
    """Read and validate an experiment file; rules paths are relative to its directory."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExperimentError(str(path), [f"cannot read: {exc.strerror}"]) from None
    return parse_experiment_text(text, str(path), path.parent)


def _locate(problems: list[tuple[tuple[str | int, ...], str]], text: str) -> list[str]:
    lines = line_index(text, is_yaml=True)
    out = []
    for loc, msg in problems:
        line = next((lines[loc[:end]] for end in range(len(loc), 0, -1) if loc[:end] in lines), 0)
        where = ".".join(str(p) for p in loc) or "(top level)"
        out.append(f"line {line}: {where}: {msg}" if line else f"{where}: {msg}")
    return out
