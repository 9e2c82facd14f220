"""Exception hierarchy: every error streamscore raises on purpose derives from StreamscoreError."""

from __future__ import annotations

from typing import Literal

#: Why a Redis call failed transiently; a closed set, fit for a metric label.
TransientReason = Literal[
    "connection", "timeout", "tryagain", "clusterdown", "redirects", "topology"
]


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


class TransientRedisError(StreamscoreError):
    """Redis cannot serve a call now (connection lost, failover, slot migration): retry it later."""

    def __init__(self, reason: TransientReason, node: str | None, detail: str) -> None:
        self.reason: TransientReason = reason
        self.node = node
        where = f" on {node}" if node else ""
        super().__init__(f"{reason}{where}: {detail}")


class ScriptError(StreamscoreError):
    """A Lua script failed inside Redis; `file` and `line` say where (line None when unknown)."""

    def __init__(self, file: str, line: int | None, detail: str) -> None:
        self.file = file
        self.line = line
        self.detail = detail
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {detail}")


class DevStackError(StreamscoreError):
    """An embedded server (broker or Valkey) failed to start or stop."""


class RetryBudgetExhausted(StreamscoreError):
    """A transient failure outlasted its retry budget; the process should exit and restart."""

    def __init__(self, operation: str, elapsed_s: float, cause: BaseException) -> None:
        self.operation = operation
        super().__init__(f"{operation} failed for {elapsed_s:.0f} s: {cause!r}")


class FatalStoreError(StreamscoreError):
    """Redis refused in a way no retry can fix (a wrong password, a script error)."""


class StoreUnreachable(StreamscoreError):
    """A command found no Redis at its URL; the message says where the URL came from."""
