"""Identity merge by a real worker on a real broker and Redis (issue 14, part 3).

The issue's probe: an anonymous history of 75 points (warm) and a known lead of 70 (warm) stay
apart until a Segment alias links them; then they are one lead, hot, handed off once with the
alias as trigger and a tier change whose cause is merge. Anonymous events after the alias land
on the known lead; a restart and a redelivered merge record change nothing; a known lead is
not merged (dead-lettered with reason merge_refused).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from streamscore.config import Settings
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

RULES = """version: probe
decay: {half_life: 7d}
engagement:
  - {id: pricing, when: {type: page_view, properties.path: /pricing}, points: 25}
  - {id: trial, when: {type: trial_signup}, points: 70}
tiers:
  - {name: cold}
  - {name: warm, enter: 50, exit: 45}
  - {name: hot, enter: 100, exit: 90}
handoff: {tier: hot}
"""


def anonymous_page(anonymous_id: str, message_id: str, time_ms: int) -> bytes:
    """A Segment page call with no userId, on /pricing."""
    return orjson.dumps(
        {
            "type": "page", "anonymousId": anonymous_id, "userId": None,
            "messageId": message_id, "timestamp": format_time_ms(time_ms),
            "context": {"page": {"path": "/pricing"}}, "properties": {"path": "/pricing"},
        }
    )  # fmt: skip


def alias(user_id: str, previous_id: str, message_id: str, time_ms: int) -> bytes:
    """A Segment alias: previousId is the same person as userId."""
    return orjson.dumps(
        {"type": "alias", "userId": user_id, "previousId": previous_id,
         "messageId": message_id, "timestamp": format_time_ms(time_ms)}
    )  # fmt: skip


@bounded(180)
async def test_the_probe_merges_once_and_survives_a_restart(
    tmp_path: Path,
    settings_factory: Callable[..., Settings],
    unique: str,
    redis_choice: dict[str, Any],
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    settings = settings_factory(rules_file=rules, dedup_window_s=86400, **redis_choice)
    anon, user, other = f"anon-{unique}", f"user-{unique}", f"known-{unique}"
    now = int(time.time() * 1000) - 60_000
    worker = WorkerProcess(settings, tmp_path)
    try:
        await worker.wait_ready()
        await produce(
            settings,
            [(settings.topic_page_views, anon.encode(), anonymous_page(anon, f"a{i}", now + i))
             for i in range(3)]
            + [(settings.topic_downloads, user.encode(),
                event(user, "trial_signup", "k1", now + 5))]
            + [(settings.topic_downloads, other.encode(),
                event(other, "trial_signup", "o1", now + 6))],
        )  # fmt: skip

        async def both_warm() -> bool:
            a, k = lead_view(worker, anon), lead_view(worker, user)
            return a.get("tier") == "warm" and k.get("tier") == "warm"

        assert await wait_for(both_warm, 30), worker.log()
        assert round(lead_view(worker, anon)["score"]) == 75
        assert round(lead_view(worker, user)["score"]) == 70
        assert lead_view(worker, anon)["identity"]["anonymous"] is True

        await produce(
            settings,
            [(settings.topic_profiles, user.encode(), alias(user, anon, "alias-1", now + 10))],
        )

        async def merged() -> dict[str, Any]:
            k = lead_view(worker, user)
            return k if k.get("identity", {}).get("merged_ids") else {}

        k = await wait_for(merged, 30)
        assert k, worker.log()
        assert [m["id"] for m in k["identity"]["merged_ids"]] == [anon]
        assert k["tier"] == "hot" and round(k["score"]) == 145
        assert {c["rule"]: round(c["points"]) for c in k["contributions"]} == {
            "pricing": 75, "trial": 70,
        }  # fmt: skip
        a = lead_view(worker, anon)
        assert a["identity"]["merged_into"] == user and a["score"] == 0 and a["tier"] == "cold"

        # An anonymous event after the alias scores on the known lead.
        await produce(
            settings,
            [(settings.topic_page_views, anon.encode(), anonymous_page(anon, "a-late", now + 20))],
        )

        async def forwarded() -> bool:
            return bool(round(lead_view(worker, user).get("score", 0)) == 170)

        assert await wait_for(forwarded, 30), worker.log()
        assert lead_view(worker, anon)["score"] == 0
        text = worker.get("/metrics")[1].decode()
        assert metric_total(text, "streamscore_identity_merges_total", result="requested") == 1
        assert metric_total(text, "streamscore_identity_merges_total", result="merged") == 1
        assert metric_total(text, "streamscore_identity_forwarded_total") == 1

        # Merging a known lead is refused: dead-lettered, and both leads stay as they were.
        await produce(
            settings,
            [(settings.topic_profiles, user.encode(), alias(user, other, "alias-2", now + 30))],
        )

        async def refused() -> list[Any]:
            letters = await read_topic(settings, settings.topic_dead_letter, timeout_s=1)
            return [d for d in letters if d["reason"] == "merge_refused"]

        letters = await wait_for(refused, 30)
        assert len(letters) == 1, worker.log()
        assert "refused_known" in letters[0]["detail"]
        assert round(lead_view(worker, other)["score"]) == 70
        assert round(lead_view(worker, user)["score"]) == 170
        assert assert_handed_off_once(await read_topic(settings, settings.topic_handoffs), user)
        changes = await read_topic(settings, settings.topic_tier_changes)
        hot = [c for c in changes if c["lead_id"] == user and c["new_tier"] == "hot"]
        assert [(c["cause"], c["triggering_event_id"]) for c in hot] == [("merge", "alias-1")]
    finally:
        assert worker.terminate() == 0, worker.log()

    # A restart, and every identity record delivered again (as after a crash between a commit
    # and the consumer's offset commit): nothing is counted twice.
    records = await read_topic(settings, settings.topic_identity)
    assert sorted(r["op"] for r in records) == ["absorb", "event", "merge_into", "merge_into"]
    await produce(
        settings,
        [(settings.topic_identity, r["lead_id"].encode(), orjson.dumps(r)) for r in records],
    )
    again = WorkerProcess(settings, tmp_path, name="again")
    try:
        await again.wait_ready()

        async def redelivered() -> bool:
            text = again.get("/metrics")[1].decode()
            return (
                metric_total(text, "streamscore_events_total", topic=settings.topic_identity) >= 4
            )

        assert await wait_for(redelivered, 30), again.log()
        k = lead_view(again, user)
        assert round(k["score"]) == 170 and [m["id"] for m in k["identity"]["merged_ids"]] == [anon]
        text = again.get("/metrics")[1].decode()
        assert metric_total(text, "streamscore_identity_merges_total", result="merged") == 0
        handoffs = await read_topic(settings, settings.topic_handoffs)
        assert assert_handed_off_once(handoffs, user)
    finally:
        assert again.terminate() == 0, again.log()


def assert_handed_off_once(handoffs: list[dict[str, Any]], user: str) -> bool:
    """One handoff of the known lead, triggered by the alias; none of anyone else."""
    mine = [h for h in handoffs if h["lead_id"] == user]
    assert [(h["new_tier"], h["triggering_event_id"]) for h in mine] == [("hot", "alias-1")]
    assert len(handoffs) == 1
    return True
