"""End to end on a real broker and Valkey: events in, scores in Redis, handoffs and DLQ out."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from streamscore.config import Settings
from streamscore.events import Limits, parse_event
from streamscore.events.types import TopicKind
from streamscore.scoring.engine import decide
from streamscore.scoring.reference import LeadState, apply_event
from streamscore.scoring.rules import load_rules
from streamscore.store.store import RedisStore
from tests.conftest import REPO_ROOT
from tests.integration.harness import (
    WorkerProcess,
    event,
    lead_mismatch,
    metric_total,
    open_test_store,
    produce,
    read_topic,
    topic_for,
    wait_for,
)

RULES = load_rules(REPO_ROOT / "examples" / "rules.yaml")
KIND_BY_TYPE = {
    "page_view": TopicKind.PAGE_VIEWS,
    "email_open": TopicKind.EMAIL_EVENTS,
    "email_click": TopicKind.EMAIL_EVENTS,
    "download": TopicKind.DOWNLOADS,
    "trial_signup": TopicKind.DOWNLOADS,
    "demo_request": TopicKind.DOWNLOADS,
    "unsubscribe": TopicKind.UNSUBSCRIBES,
    "identify": TopicKind.PROFILES,
}


@pytest.fixture
async def store(settings_factory: Callable[..., Settings]) -> AsyncIterator[RedisStore]:
    store = await open_test_store(settings_factory())
    yield store
    await store.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        code = worker.terminate(timeout_s=10)
        assert code == 0, f"worker exit code {code} after SIGTERM:\n{worker.log()}"


def reference_scores(events: list[tuple[str, bytes]], now_ms: int) -> dict[str, LeadState]:
    states: dict[str, LeadState] = {}
    for topic_type, raw in events:
        ev = parse_event(raw, KIND_BY_TYPE[topic_type], now_ms, Limits())
        state = states.setdefault(ev.lead_id, LeadState(ev.lead_id))
        apply_event(state, RULES, ev.event_id, ev.time_ms, decide(ev, RULES), 7 * 86400_000)
    return states


async def test_all_event_types_score_as_the_reference_says(
    settings_factory: Callable[..., Settings],
    start_worker: Callable[[Settings], WorkerProcess],
    store: RedisStore,
) -> None:
    settings = settings_factory()
    t0 = int(time.time() * 1000) - 3_600_000
    plan: list[tuple[str, str, dict[str, Any]]] = [
        (
            "identify",
            "ann",
            {"traits": {"title": "VP Marketing", "company_size": 900, "budget": 20000}},
        ),
        ("page_view", "ann", {"properties": {"path": "/pricing"}}),
        ("page_view", "ann", {"properties": {"path": "/blog/x"}}),
        ("email_open", "ann", {}),
        ("email_click", "bob", {}),
        ("download", "bob", {"properties": {"content_type": "whitepaper"}}),
        ("unsubscribe", "bob", {}),
        ("page_view", "bob", {"properties": {"path": "/careers"}}),
        ("trial_signup", "cy{1}:*", {}),
        ("email_open", "cy{1}:*", {}),
    ]
    events = [
        (etype, event(lead, etype, f"e{i}", t0 + i * 60_000, **extra))
        for i, (etype, lead, extra) in enumerate(plan)
    ]
    await produce(settings, [(topic_for(settings, t), None, raw) for t, raw in events])
    worker = start_worker(settings)
    await worker.wait_ready()

    async def all_scored() -> bool:
        _, body = worker.get("/metrics")
        return metric_total(body.decode(), "streamscore_events_total", outcome="scored") >= len(
            plan
        )

    assert await wait_for(all_scored, 60), worker.log()
    expected = reference_scores(events, int(time.time() * 1000))
    for state in expected.values():
        assert await lead_mismatch(store, state, RULES) is None
    # The HTTP view explains a lead, with the rules that contributed.
    status, body = worker.get("/leads/ann")
    assert status == 200
    doc = orjson.loads(body)
    assert {c["rule"] for c in doc["contributions"]} >= {"pricing_page", "title_vp_director"}


async def test_a_threshold_crossing_hands_off_exactly_once(
    settings_factory: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess]
) -> None:
    settings = settings_factory()
    worker = start_worker(settings)
    await worker.wait_ready()
    now = int(time.time() * 1000)
    traits = {"title": "Chief Revenue Officer", "company_size": 5000, "budget": 90000,
              "purchase_timeline": "now", "industry": "saas"}  # fmt: skip
    steps: list[tuple[str, dict[str, Any]]] = [
        ("identify", {"traits": traits}),
        ("page_view", {"properties": {"path": "/pricing"}}),
        ("demo_request", {}),
        ("page_view", {"properties": {"path": "/pricing/enterprise"}}),
        ("trial_signup", {}),
        ("email_click", {}),
    ]
    messages = [
        (
            topic_for(settings, t),
            b"dana",
            event("dana", t, f"d{i}", now - 60_000 + i * 1000, **extra),
        )
        for i, (t, extra) in enumerate(steps)
    ]
    await produce(settings, messages)

    async def handoffs() -> list[dict[str, object]]:
        return await read_topic(settings, settings.topic_handoffs, timeout_s=2)

    found = await wait_for(handoffs, 60)
    assert found, worker.log()
    # Later events keep the lead hot; they must not hand it off again.
    late = event("dana", "page_view", "d-late", now, properties={"path": "/demo"})
    await produce(settings, [(settings.topic_page_views, b"dana", late)])

    async def all_scored() -> bool:
        _, body = worker.get("/metrics")
        return (
            metric_total(body.decode(), "streamscore_events_total", outcome="scored")
            >= len(steps) + 1
        )

    assert await wait_for(all_scored, 30)
    found = await read_topic(settings, settings.topic_handoffs)
    assert len(found) == 1
    handoff = found[0]
    schema = orjson.loads((REPO_ROOT / "schemas" / "handoff.v1.json").read_bytes())
    jsonschema.validate(handoff, schema)
    assert handoff["lead_id"] == "dana"
    assert handoff["new_tier"] == "hot" and handoff["old_tier"] != "hot"
    assert handoff["grade"] in ("A", "B") and handoff["bant_met"] >= 2
    assert handoff["rules_version"] == RULES.version
    assert len(handoff["reasons"]) == 3
    changes = await read_topic(settings, settings.topic_tier_changes)
    assert [c["new_tier"] for c in changes if c["lead_id"] == "dana"][-1] == "hot"
    _, body = worker.get("/metrics")
    assert metric_total(body.decode(), "streamscore_handoffs_total", tier="hot") == 1
    assert metric_total(body.decode(), "streamscore_tier_changes_total", direction="up") >= 1


async def test_malformed_events_go_to_the_dead_letter_topic_and_scoring_goes_on(
    settings_factory: Callable[..., Settings],
    start_worker: Callable[[Settings], WorkerProcess],
    store: RedisStore,
) -> None:
    settings = settings_factory()
    now = int(time.time() * 1000)
    bad = [b"{not json", b"\xff\xfe\x00", orjson.dumps({"event_id": "x", "lead_id": "z"})]
    messages = [(settings.topic_page_views, b"eve", raw) for raw in bad]
    messages.append(
        (settings.topic_page_views, b"eve",
         event("eve", "page_view", "ok-1", now, properties={"path": "/pricing"}))
    )  # fmt: skip
    await produce(settings, messages)
    worker = start_worker(settings)
    await worker.wait_ready()

    async def dead() -> list[dict[str, object]]:
        letters = await read_topic(settings, settings.topic_dead_letter, timeout_s=2)
        return letters if len(letters) >= len(bad) else []

    letters = await wait_for(dead, 60)
    assert len(letters) == len(bad), worker.log()
    schema = orjson.loads((REPO_ROOT / "schemas" / "dead-letter.v1.json").read_bytes())
    for letter in letters:
        jsonschema.validate(letter, schema)
        assert letter["source_topic"] == settings.topic_page_views
    assert sorted(base64.b64decode(str(x["original_base64"])) for x in letters) == sorted(bad)
    assert {x["reason"] for x in letters} == {"malformed_json", "not_utf8", "schema"}
    assert await wait_for(lambda: store.lead_state("eve"), 30)
    _, body = worker.get("/metrics")
    assert metric_total(body.decode(), "streamscore_dead_letter_total") == len(bad)


async def test_a_lead_tells_its_story(
    settings_factory: Callable[..., Settings],
    start_worker: Callable[[Settings], WorkerProcess],
    store: RedisStore,
) -> None:
    """Its last moments, with the score after each: events, then the handoff they caused."""
    settings = settings_factory(lead_story_max=4)
    worker = start_worker(settings)
    await worker.wait_ready()
    now = int(time.time() * 1000)
    traits = {"title": "CEO", "company_size": 5000, "budget": 90000, "purchase_timeline": "now"}
    steps: list[tuple[str, dict[str, Any]]] = [
        ("identify", {"traits": traits}),
        ("page_view", {"properties": {"path": "/blog"}}),
        ("page_view", {"properties": {"path": "/pricing"}}),
        ("demo_request", {}),
        ("trial_signup", {}),
    ]
    await produce(
        settings,
        [(topic_for(settings, t), b"tell", event("tell", t, f"t{i}", now - 60_000 + i * 1000, **x))
         for i, (t, x) in enumerate(steps)],
    )  # fmt: skip

    async def told() -> list[dict[str, Any]]:
        got = await store.lead_state("tell")
        return [] if got is None or not got.story or len(got.story) < 4 else story_of(got)

    items = await wait_for(told, 60)
    assert items, worker.log()
    assert len(items) == 4  # the oldest moments gave way to the latest
    assert [i["kind"] for i in items][-1] in ("handoff", "event")
    assert "handoff" in [i["kind"] for i in items], items
    scores = [i["score"] for i in items if i["kind"] == "event"]
    assert scores == sorted(scores), "each of these events only added points"
    status, body = worker.get("/leads/tell")
    assert status == 200 and orjson.loads(body)["story"] == items


def story_of(state: Any) -> list[dict[str, Any]]:
    from streamscore.events.timefmt import format_time_ms
    from streamscore.scoring.story import items

    return [
        {"time": format_time_ms(i.time_ms), "kind": i.kind, "label": i.label, "score": i.score}
        for i in items(state)
    ]
