"""parse_event's cost per valid message, native and Segment: `python -m benchmarks.parse_event`.

Best of `--repeat` timeit runs of `--number` calls each, in microseconds a call. To compare two
trees, run it with PYTHONPATH set to each in turn (the editable install yields to PYTHONPATH).
"""

from __future__ import annotations

import argparse
import timeit
from functools import partial
from typing import Any

import orjson

from streamscore.events import Limits, TopicKind, parse_event

NOW_MS = 1_714_564_800_123
NOW = "2024-05-01T12:00:00.123Z"
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Safari/605.1.15"

MESSAGES: dict[str, tuple[TopicKind, dict[str, Any]]] = {
    "native page_view, RFC 3339 time": (TopicKind.PAGE_VIEWS, {
        "event_id": "evt-01HX3Z9K7Q", "lead_id": "lead-8f2f2c7d", "type": "page_view",
        "time": NOW, "properties": {"path": "/pricing", "title": "Pricing"},
        "context": {"user_agent": UA, "ip": "203.0.113.9"},
    }),
    "native page_view, epoch ms": (TopicKind.PAGE_VIEWS, {
        "event_id": "evt-01HX3Z9K7Q", "lead_id": "lead-8f2f2c7d", "type": "page_view",
        "time": NOW_MS, "properties": {"path": "/pricing"},
    }),
    "Segment page": (TopicKind.PAGE_VIEWS, {
        "anonymousId": "507f191e810c19729de860ea", "messageId": "ajs-next-1714564800123-4f1c8e2a",
        "timestamp": NOW, "originalTimestamp": "2024-05-01T12:00:00.100Z",
        "receivedAt": "2024-05-01T12:00:00.456Z", "sentAt": "2024-05-01T12:00:00.400Z",
        "context": {"ip": "203.0.113.9", "userAgent": UA, "library": {"name": "analytics.js"},
                    "page": {"path": "/pricing"}},
        "properties": {}, "type": "page", "version": 2,
    }),
    "Segment track": (TopicKind.DOWNLOADS, {
        "userId": "u-42", "messageId": "ajs-1", "timestamp": NOW, "type": "track",
        "event": "Whitepaper Downloaded", "properties": {"content_type": "whitepaper"},
        "context": {"traits": {"title": "VP"}},
    }),
}  # fmt: skip


def time_parse(number: int, repeat: int) -> dict[str, float]:
    """Microseconds a call, best of `repeat` runs, for each message of MESSAGES."""
    limits = Limits()
    out = {}
    for name, (kind, doc) in MESSAGES.items():
        raw = orjson.dumps(doc)
        parse_event(raw, kind, NOW_MS, limits)  # valid, and the schemas are compiled
        runs = timeit.repeat(
            partial(parse_event, raw, kind, NOW_MS, limits), number=number, repeat=repeat
        )
        out[name] = min(runs) / number * 1e6
    return out


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls a run")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best is kept")
    args = parser.parse_args()
    for name, us in time_parse(args.number, args.repeat).items():
        print(f"{name:34s} {us:6.2f} us")


if __name__ == "__main__":
    main()
