"""Synthetic website traffic for `streamscore dev --demo`, and a live view of the handoffs."""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from mode import Service

from streamscore.config import Settings
from streamscore.runtime.kafka import make_producer, security_kwargs

log = logging.getLogger(__name__)

PROSPECT_TRAITS = [
    {"title": "VP of Sales", "company_size": 850, "industry": "SaaS", "country": "US",
     "budget": 50000, "purchase_timeline": "this_quarter", "use_case": "pipeline scoring",
     "email": "dana@northwind.io"},
    {"title": "Chief Marketing Officer", "company_size": 3200, "industry": "Fintech",
     "country": "GB", "budget": 120000, "purchase_timeline": "now", "email": "lee@acmebank.co.uk"},
    {"title": "Director of Demand Generation", "company_size": 400, "industry": "Healthcare",
     "country": "DE", "budget": 25000, "use_case": "lead routing", "email": "kim@medix.de"},
]  # fmt: skip
BROWSER_TRAITS = [
    {"title": "Marketing Intern", "company_size": 12, "country": "US", "email": "sam@gmail.com"},
    {"title": "Software Engineer", "company_size": 90, "industry": "Retail", "country": "FR"},
    {"title": "Recruiter", "email": "jo@mailinator.com", "country": "CA"},
]
PATHS = ["/", "/blog/lead-scoring-101", "/features", "/customers", "/pricing", "/demo", "/careers"]
PATH_WEIGHTS = [30, 25, 15, 10, 8, 4, 3]


class DemoTraffic(Service):
    """Produces a realistic mix of events: most leads browse, a few prospects turn hot."""

    def __init__(self, settings: Settings, rate_per_s: float = 150.0, seed: int = 7) -> None:
        super().__init__()
        self.settings = settings
        self.rate_per_s = rate_per_s
        self.rng = random.Random(seed)
        self.producer: AIOKafkaProducer | None = None
        self._seq = 0

    async def on_start(self) -> None:
        self.producer = make_producer(self.settings, linger_ms=5)
        await self.producer.start()

    async def on_stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    def _event(self, lead: str, event_type: str, **extra: Any) -> bytes:
        self._seq += 1
        doc = {
            "event_id": f"demo-{self._seq}-{self.rng.getrandbits(32):08x}",
            "lead_id": lead,
            "type": event_type,
            "time": time.time_ns() // 1_000_000,
            **extra,
        }
        return orjson.dumps(doc)

    async def _send(self, topic: str, lead: str, event_type: str, **extra: Any) -> None:
        assert self.producer is not None
        await self.producer.send(topic, self._event(lead, event_type, **extra), key=lead.encode())

    @Service.task
    async def _generate(self) -> None:
        s = self.settings
        n_leads = 400
        # Zipf-like activity: lead i is picked with weight 1/(i+1).
        weights = [1.0 / (i + 1) for i in range(n_leads)]
        prospects = set(self.rng.sample(range(n_leads), 12))
        for i in range(n_leads):
            lead = f"lead-{i:04d}"
            traits = self.rng.choice(PROSPECT_TRAITS if i in prospects else BROWSER_TRAITS)
            await self._send(s.topic_profiles, lead, "identify", traits=traits)
        interval = 1.0 / self.rate_per_s
        while not self.should_stop:
            i = self.rng.choices(range(n_leads), weights)[0]
            lead = f"lead-{i:04d}"
            roll = self.rng.random()
            if i in prospects and roll < 0.25:
                path = self.rng.choice(["/pricing", "/demo", "/pricing/enterprise"])
                await self._send(s.topic_page_views, lead, "page_view", properties={"path": path})
            elif roll < 0.6:
                path = self.rng.choices(PATHS, PATH_WEIGHTS)[0]
                ua = "Googlebot/2.1" if self.rng.random() < 0.01 else "Mozilla/5.0"
                await self._send(
                    s.topic_page_views, lead, "page_view",
                    properties={"path": path}, context={"user_agent": ua},
                )  # fmt: skip
            elif roll < 0.8:
                kind = "email_click" if self.rng.random() < 0.3 else "email_open"
                await self._send(s.topic_email_events, lead, kind, properties={"campaign": "nov"})
            elif roll < 0.97:
                kind = self.rng.choices(
                    ["download", "webinar_signup", "trial_signup", "demo_request"], [70, 15, 10, 5]
                )[0]
                props = {"content_type": self.rng.choice(["whitepaper", "case_study", "ebook"])}
                await self._send(s.topic_downloads, lead, kind, properties=props)
            elif roll < 0.997:
                await self._send(s.topic_unsubscribes, lead, "unsubscribe")
            else:
                await self._send(s.topic_page_views, lead, "page_view", properties=["bad"])
            await asyncio.sleep(interval)


class HandoffPrinter(Service):
    """Prints each handoff (and tier change) as it lands on the output topics."""

    def __init__(self, settings: Settings, out: TextIO = sys.stdout) -> None:
        super().__init__()
        self.settings = settings
        self.out = out
        self._t0 = time.monotonic()

    @Service.task
    async def _watch(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            s.topic_handoffs,
            s.topic_dead_letter,
            bootstrap_servers=s.kafka_bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            **security_kwargs(s),
        )
        await consumer.start()
        try:
            while not self.should_stop:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, messages in batches.items():
                    for m in messages:
                        self._print(tp.topic, orjson.loads(m.value))
        finally:
            await consumer.stop()

    def _print(self, topic: str, doc: dict[str, Any]) -> None:
        elapsed = time.monotonic() - self._t0
        if topic == self.settings.topic_handoffs:
            reasons = ", ".join(f"{r['rule']} {r['points']:+.0f}" for r in doc["reasons"])
            bant = sum(doc["bant"].values())
            print(
                f"[{elapsed:6.1f}s] HANDOFF {doc['lead_id']}: {doc['old_tier']} -> "
                f"{doc['new_tier']}, score {doc['score']:.1f}, grade {doc['grade']}, "
                f"BANT {bant}/4; top reasons: {reasons}",
                file=self.out,
                flush=True,
            )
        else:
            print(
                f"[{elapsed:6.1f}s] dead-letter ({doc['reason']}): {doc['detail'][:80]}",
                file=self.out,
                flush=True,
            )
