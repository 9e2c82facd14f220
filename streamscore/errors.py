"""Exception hierarchy: every error streamscore raises on purpose derives from StreamscoreError."""

from __future__ import annotations


class StreamscoreError(Exception):
    """Base class of streamscore's own errors."""


class ConfigError(StreamscoreError):
    """A setting or settings file is invalid; the message names the source, field and problem."""


class RulesError(StreamscoreError):
    """A rules file is invalid; `problems` lists each error with its location."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listed = "\n".join(f"  {source}: {p}" for p in problems)
        super().__init__(f"invalid rules file {source} ({len(problems)} error(s)):\n{listed}")


class InvalidEvent(StreamscoreError):
    """An input message cannot be scored; `reason` is a short closed-set code for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class StoreUnavailable(StreamscoreError):
    """Redis stayed unreachable after the bounded retry, or refused our credentials."""


class DevStackError(StreamscoreError):
    """An embedded server (broker or Valkey) failed to start or stop."""
