"""Synthetic website traffic for `streamscore dev --demo`, a CRM that answers its handoffs, and
a live view of the handoffs."""

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
        #: Each lead's hidden intent to buy, 0 to 1: it drives the lead's activity, and the demo
        #: CRM's odds of touching, accepting and winning it (so the report shows a real curve).
        self.intent: dict[str, float] = {}
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
        prospects = set(self.rng.sample(range(n_leads), 40))
        for i in range(n_leads):
            lead = f"lead-{i:04d}"
            traits = self.rng.choice(PROSPECT_TRAITS if i in prospects else BROWSER_TRAITS)
            self.intent[lead] = self.rng.random() if i in prospects else 0.05 * self.rng.random()
            await self._send(s.topic_profiles, lead, "identify", traits=traits)
        interval = 1.0 / self.rate_per_s
        while not self.should_stop:
            i = self.rng.choices(range(n_leads), weights)[0]
            lead = f"lead-{i:04d}"
            roll = self.rng.random()
            if i in prospects and roll < 0.05 + 0.35 * self.intent[lead]:
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


class DemoCrm(Service):
    """Plays a CRM: answers each handoff with sales outcomes, as a sales team would.

    A rep touches most handed-off leads within seconds (demo time is compressed), accepts or
    rejects them, and opens and wins deals with odds that grow with the lead's hidden intent,
    which its score only estimates: `streamscore report` on a demo that has run a few minutes
    shows conversion rising with the score.
    """

    def __init__(self, settings: Settings, traffic: DemoTraffic, seed: int = 11) -> None:
        super().__init__()
        self.settings = settings
        self.traffic = traffic
        self.rng = random.Random(seed)
        self.producer: AIOKafkaProducer | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def on_start(self) -> None:
        self.producer = make_producer(self.settings, linger_ms=5)
        await self.producer.start()

    async def on_stop(self) -> None:
        for task in self._pending:
            task.cancel()
        if self.producer is not None:
            await self.producer.stop()

    @Service.task
    async def _answer(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            s.topic_handoffs,
            bootstrap_servers=s.kafka_bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            **security_kwargs(s),
        )
        await consumer.start()
        try:
            while not self.should_stop:
                batches = await consumer.getmany(timeout_ms=500)
                for messages in batches.values():
                    for m in messages:
                        doc = orjson.loads(m.value)
                        task = asyncio.create_task(
                            self._follow_up(doc["lead_id"], doc["handoff_id"])
                        )
                        self._pending.add(task)
                        task.add_done_callback(self._pending.discard)
        finally:
            await consumer.stop()

    async def _follow_up(self, lead: str, handoff_id: str) -> None:
        """The steps a sales team takes with one handed-off lead, a few seconds apart."""
        rng = self.rng
        intent = self.traffic.intent.get(lead, 0.05)
        if rng.random() < 0.1:
            return  # dropped on the floor: no touch at all
        await self._step(lead, handoff_id, "first_touch", rng.uniform(1, 8),
                         channel=rng.choice(["call", "email", "meeting"]))  # fmt: skip
        if rng.random() > 0.35 + 0.6 * intent:
            reason = rng.choice(["not a fit", "no budget", "bad timing", "student"])
            await self._step(lead, handoff_id, "sales_rejected", rng.uniform(1, 5), reason=reason)
            return
        await self._step(lead, handoff_id, "sales_accepted", rng.uniform(1, 5))
        if rng.random() < intent:
            amount = round(rng.uniform(5_000, 80_000), -2)
            await self._step(lead, handoff_id, "opportunity_created", rng.uniform(2, 10),
                             amount=amount)  # fmt: skip
            won = rng.random() < 0.25 + 0.6 * intent
            await self._step(lead, handoff_id, "won" if won else "lost", rng.uniform(3, 15),
                             amount=amount, reason=None if won else "price")  # fmt: skip

    async def _step(
        self, lead: str, handoff_id: str, kind: str, after_s: float, **extra: Any
    ) -> None:
        await asyncio.sleep(after_s)
        if self.should_stop or self.producer is None:
            return
        doc = {
            "outcome_id": f"crm-{handoff_id[:12]}-{kind}",
            "lead_id": lead,
            "type": kind,
            "time": time.time_ns() // 1_000_000,
            "source": "demo-crm",
            **{k: v for k, v in extra.items() if v is not None},
        }
        await self.producer.send(self.settings.topic_outcomes, orjson.dumps(doc), key=lead.encode())


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
