"""Custom tracker events score by name, from the rules file alone: no code, no release."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from streamscore.config import Settings
from tests.integration.faults_support import QUIET
from tests.integration.harness import (
    WorkerProcess,
    bounded,
    lead_view,
    metric_total,
    produce,
    read_topic,
    wait_for,
)


def track(lead: str, event_id: str, name: str, time_ms: int, **properties: Any) -> bytes:
    """A native track event, as the collector writes a Segment `track` call."""
    doc = {"event_id": event_id, "lead_id": lead, "type": "track", "event": name, "time": time_ms}
    return orjson.dumps({**doc, "properties": properties})


@bounded(180)
async def test_track_events_score_by_their_name_and_unknown_names_are_dead_lettered(
    settings_factory: Callable[..., Settings], workers: list[WorkerProcess], tmp_path: Path
) -> None:
    settings = settings_factory(track_unknown="dead_letter", **QUIET)
    now = int(time.time() * 1000)
    topic = settings.topic_track
    await produce(settings, [
        (topic, b"ann", track("ann", "t1", "Form Submitted", now - 5000, form="contact-sales")),
        (topic, b"ann", track("ann", "t2", "LinkedIn Post Liked", now - 4000, post="launch")),
        # A name the rules use, with another form: scored, for no points.
        (topic, b"bob", track("bob", "t3", "Form Submitted", now - 3000, form="newsletter")),
        (topic, b"bob", track("bob", "t4", "Mystery Clicked", now - 2000)),
    ])  # fmt: skip
    worker = WorkerProcess(settings, tmp_path)
    workers.append(worker)
    await worker.wait_ready()

    async def counted() -> bool:
        _, body = worker.get("/metrics")
        text = body.decode()
        return metric_total(text, "streamscore_events_total", topic=topic) >= 4

    assert await wait_for(counted, 60), worker.log()
    ann = lead_view(worker, "ann")
    points = {c["rule"]: c["points"] for c in ann["contributions"]}
    assert points == {"contact_sales_form": 20.0, "linkedin_like": 3.0}, ann
    assert ann["score"] == 23.0
    _, body = worker.get("/metrics")
    text = body.decode()
    accepted = {"event": "Form Submitted", "outcome": "accepted"}
    assert metric_total(text, "streamscore_track_events_total", **accepted) == 2
    assert metric_total(text, "streamscore_track_events_total", outcome="accepted") == 3
    # A name no rule uses is counted as `other` (bounded labels) and dead-lettered.
    assert metric_total(text, "streamscore_track_events_total", event="other") == 1
    assert lead_view(worker, "bob")["score"] == 0.0
    letters = await read_topic(settings, settings.topic_dead_letter, timeout_s=10)
    assert [d["reason"] for d in letters] == ["unknown_event"], letters
