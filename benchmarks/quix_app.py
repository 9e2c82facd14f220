"""Baseline (q): the simple job as a Quix Streams user would write it, following its docs.

`StreamingDataFrame.concat` of the four input topics, a stateful `apply` on the default RocksDB
state store (one value per lead: score, time, armed), and handoffs written with `to_topic`.
The Application keeps its defaults (at-least-once processing, a checkpoint every 5 s, changelog
topics for the state) but reads from the earliest offset. Quix orders the concatenated topics by
record timestamp, partition number by partition number; the benchmark produces the simple job's
records with their event time as the timestamp, so that order is event-time order.

For the benchmark only: an `on_message_processed` callback counts messages, and a thread writes
the count to --progress every 20 ms (the benchmark's window and its event count come from it).
Runs until SIGTERM, which Quix handles by committing a last checkpoint.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

from quixstreams import Application, State

from benchmarks.simple_job import HALF_LIFE_MS, HANDOFF_AT, REARM_BELOW, points_of

PROGRESS_EVERY_S = 0.02


class Progress:
    """Messages processed, written to a file by a daemon thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write_loop, daemon=True)

    def on_processed(self, topic: str, partition: int, offset: int) -> None:
        """Application's on_message_processed callback."""
        self.count += 1

    def start(self) -> None:
        """Start writing."""
        self._thread.start()

    def stop(self) -> None:
        """Write the final count."""
        self._stop.set()
        self._thread.join()
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(self.count))
        tmp.replace(self.path)

    def _write_loop(self) -> None:
        while not self._stop.wait(PROGRESS_EVERY_S):
            self._write()


def score(value: dict[str, Any], state: State[str, Any]) -> dict[str, Any] | None:
    """Apply one event to its lead's state; the handoff it triggers, if any."""
    points = points_of(value)
    if points is None:
        return None
    t = value["time"]
    lead = state.get("lead")
    if lead is None:
        s, armed = 0.0, True
    else:
        s = lead[0] * 2.0 ** ((lead[1] - t) / HALF_LIFE_MS)
        armed = lead[2]
    if s < REARM_BELOW:
        armed = True
    s += points
    if s < REARM_BELOW:
        armed = True
    handoff = None
    if armed and s >= HANDOFF_AT:
        armed = False
        handoff = {
            "lead_id": value["lead_id"],
            "triggering_event_id": value["event_id"],
            "score": s,
            "event_time_ms": t,
        }
    state.set("lead", [s, t, armed])
    return handoff


def build(opts: argparse.Namespace, progress: Progress) -> Application:
    """The Application and its dataframe."""
    app = Application(
        broker_address=opts.bootstrap,
        consumer_group=opts.group,
        auto_offset_reset="earliest",
        state_dir=opts.state_dir,
        loglevel="WARNING",
        on_message_processed=progress.on_processed,
    )
    frames = [app.dataframe(app.topic(name)) for name in opts.topics.split(",")]
    sdf = frames[0]
    for other in frames[1:]:
        sdf = sdf.concat(other)
    sdf = sdf.apply(score, stateful=True).filter(lambda handoff: handoff is not None)
    sdf.to_topic(app.topic(opts.handoffs))
    return app


def main(argv: list[str] | None = None) -> None:
    """Parse the options and run until SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.quix_app", description=__doc__)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topics", required=True, help="the input topics, comma-separated")
    p.add_argument("--handoffs", required=True, help="the handoff topic")
    p.add_argument("--group", required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--progress", type=Path, required=True)
    opts = p.parse_args(argv)
    progress = Progress(opts.progress)
    app = build(opts, progress)
    progress.start()
    try:
        app.run()
    finally:
        progress.stop()


if __name__ == "__main__":
    main()
