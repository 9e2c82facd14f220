"""Parse human durations such as 14d, 12h, 30m, 45s, 2w or a number of seconds."""

from __future__ import annotations

import re

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration_s(value: object) -> float:
    """Return seconds for `value`; raise ValueError naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 14d, 12h, 30m or seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration like 14d, 12h, 30m or seconds, got {value!r}")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds
