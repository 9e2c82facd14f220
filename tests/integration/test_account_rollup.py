"""Account roll-up by a real worker on a real broker and Redis (issue 14, part 4).

Three people from acme.com each get warm; their account crosses its threshold and one account
handoff names the three of them. A gmail.com lead joins no account; a group call assigns one
(its traits give the account fit). A restart with every account record delivered again hands
nothing off twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from streamscore.config import Settings
from streamscore.events.schemas import compile_schema
from streamscore.events.timefmt import format_time_ms
from tests.integration.harness import (
    WorkerProcess,
    bounded,
    event,
    lead_view,
    metric_total,
    produce,
    read_topic,
    wait_for,
)

RULES = """version: accounts-probe
decay: {half_life: 7d}
engagement:
  - {id: pricing, when: {type: page_view, properties.path: /pricing}, points: 25}
  - {id: trial, when: {type: trial_signup}, points: 60}
tiers:
  - {name: cold}
  - {name: warm, enter: 50, exit: 45}
  - {name: hot, enter: 100, exit: 90}
handoff: {tier: hot}
accounts:
  top: 3
  decay: {half_life: 14d}
  fit:
    - {id: big, when: {employees: {gte: 200}}, points: 30}
  tiers:
    - {name: cold}
    - {name: engaged, enter: 100}
    - {name: target, enter: 170, exit: 150}
  handoff: {tier: target}
"""


def identify(user_id: str, email: str, message_id: str, time_ms: int) -> bytes:
    """A Segment identify with an email trait."""
    return orjson.dumps(
        {"type": "identify", "userId": user_id, "messageId": message_id,
         "timestamp": format_time_ms(time_ms), "traits": {"email": email}}
    )  # fmt: skip


def group(user_id: str, group_id: str, message_id: str, time_ms: int) -> bytes:
    """A Segment group call with firmographic traits."""
    return orjson.dumps(
        {"type": "group", "userId": user_id, "groupId": group_id, "messageId": message_id,
         "timestamp": format_time_ms(time_ms), "traits": {"name": "Initech", "employees": 500}}
    )  # fmt: skip


@bounded(180)
async def test_three_warm_colleagues_hand_their_account_off_once(
    tmp_path: Path,
    settings_factory: Callable[..., Settings],
    unique: str,
    redis_choice: dict[str, Any],
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    settings = settings_factory(rules_file=rules, **redis_choice)
    people = [f"{name}-{unique}" for name in ("ann", "bob", "cy")]
    solo, grouped = f"solo-{unique}", f"dora-{unique}"
    domain = f"acme-{unique}.com"
    now = int(time.time() * 1000) - 60_000
    worker = WorkerProcess(settings, tmp_path)
    try:
        await worker.wait_ready()
        # Each colleague: an identify with the company email, then a trial (60: warm).
        batch = []
        for i, person in enumerate(people):
            batch.append((settings.topic_profiles, person.encode(),
                          identify(person, f"{person}@{domain}", f"id-{i}", now + i)))  # fmt: skip
            batch.append((settings.topic_downloads, person.encode(),
                          event(person, "trial_signup", f"t-{i}", now + 10 + i)))  # fmt: skip
        batch.append((settings.topic_profiles, solo.encode(),
                      identify(solo, f"{solo}@gmail.com", "id-solo", now + 20)))  # fmt: skip
        batch.append((settings.topic_downloads, solo.encode(),
                      event(solo, "trial_signup", "t-solo", now + 21)))  # fmt: skip
        batch.append((settings.topic_profiles, grouped.encode(),
                      group(grouped, f"initech-{unique}", "g-1", now + 30)))  # fmt: skip
        await produce(settings, batch)

        async def account_handoffs() -> list[dict[str, Any]]:
            return await read_topic(settings, settings.topic_account_handoffs, timeout_s=1)

        handoffs = await wait_for(account_handoffs, 45)
        assert len(handoffs) == 1, worker.log()
        (h,) = handoffs
        validate = compile_schema("account-handoff.v1.json")
        validate(h)
        assert h["account_id"] == domain and h["tier"] == "target"
        assert sorted(m["lead_id"] for m in h["leads"]) == sorted(people)
        assert round(h["score"]) == 180 and h["fit"] == 0
        assert all(lead_view(worker, p)["tier"] == "warm" for p in people)
        assert lead_view(worker, people[0])["account"] == {"id": domain, "from": "email"}
        assert (
            lead_view(worker, solo)["account"] is None and lead_view(worker, solo)["tier"] == "warm"
        )

        async def grouped_lead() -> dict[str, Any]:
            return lead_view(worker, grouped)

        g = await wait_for(grouped_lead, 30)
        assert g["account"] == {"id": f"initech-{unique}", "from": "group"}, worker.log()

        # A fourth colleague warms up: the account is handed off already (armed again only
        # below its target tier's exit), so nothing new.
        extra = f"dee-{unique}"
        await produce(
            settings,
            [(settings.topic_profiles, extra.encode(),
              identify(extra, f"{extra}@{domain}", "id-3", now + 40)),
             (settings.topic_downloads, extra.encode(),
              event(extra, "trial_signup", "t-3", now + 41))],
        )  # fmt: skip

        async def applied() -> bool:
            # The fourth colleague joined, and every account record the worker sent is applied,
            # once. (How many there are depends on whether a colleague's trial or identify came
            # first: a lead sends its engagement only once it has an account.)
            if lead_view(worker, extra).get("account") != {"id": domain, "from": "email"}:
                return False
            sent = await read_topic(settings, settings.topic_account_updates, timeout_s=1)
            text = worker.get("/metrics")[1].decode()
            done = metric_total(text, "streamscore_account_updates_total", result="applied")
            return len(sent) >= 6 and done == len(sent)

        assert await wait_for(applied, 30), worker.log()
        assert lead_view(worker, extra)["tier"] == "warm"
        text = worker.get("/metrics")[1].decode()
        assert metric_total(text, "streamscore_account_handoffs_total", tier="target") == 1
    finally:
        assert worker.terminate() == 0, worker.log()

    # A restart, and every account record delivered again: no second account handoff.
    records = await read_topic(settings, settings.topic_account_updates)
    assert {r["account_id"] for r in records} == {domain, f"initech-{unique}"}
    assert not any(r["lead_id"] == solo for r in records)
    (traits,) = [r["traits"] for r in records if "traits" in r]
    assert traits["employees"] == 500
    await produce(
        settings,
        [(settings.topic_account_updates, r["account_id"].encode(), orjson.dumps(r))
         for r in records],
    )  # fmt: skip
    again = WorkerProcess(settings, tmp_path, name="again")
    try:
        await again.wait_ready()

        async def redelivered() -> bool:
            text = again.get("/metrics")[1].decode()
            topic = settings.topic_account_updates
            return metric_total(text, "streamscore_events_total", topic=topic) >= len(records)

        assert await wait_for(redelivered, 30), again.log()
        text = again.get("/metrics")[1].decode()
        assert metric_total(text, "streamscore_account_updates_total", result="applied") == 0
        assert len(await read_topic(settings, settings.topic_account_handoffs)) == 1
    finally:
        assert again.terminate() == 0, again.log()
