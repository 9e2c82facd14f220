"""The runtime's one reader of the wall clock (scoring/ takes `now` as a parameter)."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return time.time_ns() // 1_000_000
