"""The model lab's errors: an invalid experiment file, a refused export, a refused promotion."""

from __future__ import annotations

from streamscore.errors import ConfigError, StreamscoreError


class ExperimentError(ConfigError):
    """An A/B experiment file is invalid; `problems` lists each error with its location."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listed = "\n".join(f"  {source}: {p}" for p in problems)
        super().__init__(f"invalid experiment file {source} ({len(problems)} error(s)):\n{listed}")


class LearnRefused(StreamscoreError):
    """The outcomes cannot support a learned model (too few, or too imbalanced); says why."""


class LabInputError(StreamscoreError):
    """A snapshot, outcomes or examples file cannot be read; the message names file and line."""


class PromotionError(StreamscoreError):
    """A promotion or rollback was refused; the live rules file is unchanged."""
