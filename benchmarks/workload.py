"""Deterministic (seeded) synthetic event streams: the replay workload and the paced live mix."""

from __future__ import annotations

import bisect
import itertools
import random
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from streamscore.events import format_time_ms

#: The benchmark's jobs: the full example rules, or issue 16's simple job.
Job = Literal["full", "simple"]

#: Index of each input topic, in Settings.input_topics order.
PAGE_VIEWS, EMAIL_EVENTS, DOWNLOADS, UNSUBSCRIBES, PROFILES = range(5)
TOPIC_OF_TYPE = {
    "page_view": PAGE_VIEWS,
    "email_open": EMAIL_EVENTS,
    "email_click": EMAIL_EVENTS,
    "download": DOWNLOADS,
    "webinar_signup": DOWNLOADS,
    "trial_signup": DOWNLOADS,
    "demo_request": DOWNLOADS,
    "contact_request": DOWNLOADS,
    "unsubscribe": UNSUBSCRIBES,
    "identify": PROFILES,
}

#: Share of all events, in percent: page views 60, email 25, downloads & co 10, unsubscribes 2,
#: identify 3 (identify only for the leads that have a profile).
TYPE_MIX = (
    ("page_view", 60.0),
    ("email_open", 18.0),
    ("email_click", 7.0),
    ("download", 6.0),
    ("webinar_signup", 2.0),
    ("trial_signup", 1.0),
    ("demo_request", 0.6),
    ("contact_request", 0.4),
    ("unsubscribe", 2.0),
    ("identify", 3.0),
)
#: The simple job's mix (issue 16): only the four event types it scores, one per input topic.
SIMPLE_MIX = (
    ("page_view", 62.0),
    ("email_open", 25.0),
    ("download", 10.0),
    ("unsubscribe", 3.0),
)
PATHS = (
    ("/", 20),
    ("/blog/lead-scoring-101", 12),
    ("/blog/intent-data", 8),
    ("/features", 12),
    ("/customers", 8),
    ("/docs/getting-started", 10),
    ("/integrations/salesforce", 5),
    ("/pricing", 9),
    ("/pricing/enterprise", 2),
    ("/demo", 4),
    ("/book-a-demo", 1),
    ("/careers", 3),
    ("/careers/backend-engineer", 1),
)
CONTENT_TYPES = ("whitepaper", "ebook", "report", "case_study", "datasheet", "template")
BROWSER_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
)
BOT_UA = ("Mozilla/5.0 (compatible; Googlebot/2.1)", "python-requests/2.31", "HeadlessChrome/124")
TITLES = (
    ("CEO", 2), ("CTO", 2), ("Founder & CEO", 1), ("Chief Revenue Officer", 1),
    ("VP Marketing", 4), ("VP of Sales", 3), ("Director of Demand Generation", 4),
    ("Head of Growth", 3), ("Marketing Manager", 12), ("Sales Team Lead", 6),
    ("Software Engineer", 15), ("Data Analyst", 10), ("Recruiter", 5), ("Student", 5),
    ("Marketing Intern", 4), ("Consultant", 8),
)  # fmt: skip
SIZES = ((5, 10), (15, 12), (50, 15), (120, 15), (350, 14), (900, 12), (1800, 8), (4500, 8),
         (12000, 6))  # fmt: skip
INDUSTRIES = ("software", "SaaS", "fintech", "Healthcare", "retail", "education",
              "manufacturing", "e-commerce", "government", "media")  # fmt: skip
COUNTRIES = (("US", 35), ("GB", 10), ("DE", 8), ("FR", 5), ("CA", 5), ("NL", 3), ("SE", 2),
             ("AU", 3), ("IN", 10), ("BR", 6), ("JP", 5), ("ES", 4), ("KP", 0.2))  # fmt: skip
TIMELINES = (None, None, None, "now", "this_quarter", "0-3 months", "3-6 months", "next year")
BUDGETS = (None, None, None, 5000, 15000, 50000, 200000)
USE_CASES = (None, None, None, "lead routing", "pipeline scoring", "attribution")
FREE_MAIL = ("gmail.com", "yahoo.com", "outlook.com")
BAD_MAIL = ("mailinator.com", "hubspot.com")


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a key: the same number in every topic, so one worker sees a lead whole."""
    return zlib.crc32(key) % partitions


def _weighted(pairs: tuple[tuple[Any, float], ...]) -> tuple[list[Any], list[float]]:
    values = [v for v, _ in pairs]
    cum = list(itertools.accumulate(w for _, w in pairs))
    return values, cum


@dataclass(frozen=True, slots=True)
class Message:
    """One pre-encoded input record."""

    topic: int  # index into Settings.input_topics
    partition: int
    key: bytes
    value: bytes
    time_ms: int = 0  # the event time, also the record timestamp when the job asks for it


@dataclass
class Workload:
    """The replay workload: messages in event-time order, and what they contain."""

    messages: list[Message]
    leads: int
    start_ms: int
    end_ms: int
    by_type: Counter[str] = field(default_factory=Counter)
    segment_shaped: int = 0
    profiled_leads: int = 0

    def per_partition(self, topics: int, partitions: int) -> dict[tuple[int, int], int]:
        """Records per (topic index, partition)."""
        counts: Counter[tuple[int, int]] = Counter()
        for m in self.messages:
            counts[(m.topic, m.partition)] += 1
        return {(t, p): counts[(t, p)] for t in range(topics) for p in range(partitions)}


class Profiles:
    """Deterministic profile traits per lead (some strong prospects, mostly mixed)."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._titles = _weighted(TITLES)
        self._sizes = _weighted(SIZES)
        self._countries = _weighted(COUNTRIES)

    def traits(self, lead_index: int, lead_id: str, update: int) -> dict[str, Any]:
        """Traits of one identify call; later calls (update > 0) may add buying signals."""
        rng = random.Random(self._seed * 1_000_003 + lead_index)
        strong = rng.random() < 0.12
        if strong:
            title = rng.choice(("CEO", "CTO", "VP Marketing", "Director of Sales Ops"))
            size = rng.choice((900, 1800, 4500, 12000))
            country = rng.choice(("US", "GB", "DE", "CA"))
        else:
            title = rng.choices(*self._titles)[0]
            size = rng.choices(*self._sizes)[0]
            country = rng.choices(*self._countries)[0]
        roll = rng.random()
        domain = (
            rng.choice(BAD_MAIL)
            if roll < 0.01
            else rng.choice(FREE_MAIL)
            if roll < 0.16
            else f"corp{lead_index % 9973}.example"
        )
        traits: dict[str, Any] = {
            "email": f"{lead_id.lower()}@{domain}",
            "title": title,
            "company": f"Company {lead_index % 9973}",
            "employees": size,
            "industry": rng.choice(INDUSTRIES),
            "country": country,
        }
        if rng.random() < 0.3:
            traits["annual_revenue"] = size * rng.choice((50_000, 150_000))
        # Buying signals tend to appear on a later identify (a form fill, a sales call).
        signals = random.Random(self._seed * 7_000_003 + lead_index * 31 + update)
        budget = 50000 if strong and update else signals.choice(BUDGETS)
        timeline = "this_quarter" if strong and update else signals.choice(TIMELINES)
        use_case = signals.choice(USE_CASES)
        if budget is not None:
            traits["budget"] = budget
        if timeline is not None:
            traits["purchase_timeline"] = timeline
        if use_case is not None:
            traits["use_case"] = use_case
        return traits


class EventFactory:
    """Builds event documents of every type, native or Segment-shaped."""

    def __init__(self, rng: random.Random, profiles: Profiles, segment_share: float = 0.3) -> None:
        self.rng = rng
        self.profiles = profiles
        self.segment_share = segment_share
        self._paths = _weighted(PATHS)
        self.segment_shaped = 0

    def event_id(self) -> str:
        """A random 128-bit id, as a UUID-like string."""
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def document(
        self,
        event_type: str,
        lead_id: str,
        lead_index: int,
        time_ms: int,
        identify_count: int = 0,
        path: str | None = None,
    ) -> dict[str, Any]:
        """One event document (dict) for event_type."""
        rng = self.rng
        # The draw is made even with segment_share 0, so one seed gives one stream of choices.
        draw = rng.random() if event_type in ("page_view", "identify", "download") else 1.0
        segment = draw < self.segment_share
        if segment:
            self.segment_shaped += 1
            return self._segment(event_type, lead_id, lead_index, time_ms, identify_count, path)
        doc: dict[str, Any] = {
            "event_id": self.event_id(),
            "lead_id": lead_id,
            "type": event_type,
            "time": time_ms,
        }
        if event_type == "page_view":
            ua = rng.choice(BOT_UA) if rng.random() < 0.005 else rng.choice(BROWSER_UA)
            path = path or rng.choices(*self._paths)[0]
            doc["properties"] = {"path": path, "url": f"https://example.com{path}"}
            doc["context"] = {"user_agent": ua, "ip": f"203.0.113.{lead_index % 250}"}
        elif event_type in ("email_open", "email_click"):
            doc["properties"] = {"campaign_id": f"cmp-{rng.randrange(40)}", "email_id": "nl-1"}
            if event_type == "email_click":
                doc["properties"]["url"] = "https://example.com/blog/intent-data"
        elif event_type == "download":
            doc["properties"] = {"content_type": rng.choice(CONTENT_TYPES), "asset": "guide"}
        elif event_type in ("webinar_signup", "trial_signup", "demo_request", "contact_request"):
            doc["properties"] = {"form": event_type, "source": "website"}
        elif event_type == "unsubscribe":
            doc["properties"] = {"list": "newsletter"}
        elif event_type == "identify":
            doc["traits"] = self.profiles.traits(lead_index, lead_id, identify_count)
        return doc

    def _segment(
        self,
        event_type: str,
        lead_id: str,
        lead_index: int,
        time_ms: int,
        identify_count: int,
        path: str | None,
    ) -> dict[str, Any]:
        rng = self.rng
        stamp = format_time_ms(time_ms)
        doc: dict[str, Any] = {
            "messageId": f"ajs-next-{time_ms}-{rng.getrandbits(32):08x}",
            "userId": lead_id,
            "anonymousId": f"{rng.getrandbits(96):024x}",
            "timestamp": stamp,
            "sentAt": stamp,
            "version": 2,
            "context": {
                "ip": f"203.0.113.{lead_index % 250}",
                "userAgent": rng.choice(BROWSER_UA),
                "library": {"name": "analytics.js", "version": "next-1.64.0"},
            },
        }
        if event_type == "page_view":
            path = path or rng.choices(*self._paths)[0]
            doc["type"] = "page"
            doc["context"]["page"] = {"path": path, "url": f"https://example.com{path}"}
            doc["properties"] = {"title": path.strip("/") or "home"}
        elif event_type == "identify":
            doc["type"] = "identify"
            doc["traits"] = self.profiles.traits(lead_index, lead_id, identify_count)
        else:
            doc["type"] = "track"
            doc["event"] = "Whitepaper Downloaded"
            doc["properties"] = {"content_type": rng.choice(CONTENT_TYPES)}
        return doc


def lead_id_of(index: int, tag: str = "L") -> str:
    """The id of lead number `index`."""
    return f"{tag}{index:07d}"


def leads_per_batch(messages: Sequence[Message], batch: int) -> float:
    """Mean distinct leads (record keys) in consecutive runs of `batch` messages."""
    counts = [len({m.key for m in messages[i : i + batch]}) for i in range(0, len(messages), batch)]
    return sum(counts) / len(counts) if counts else 0.0


def build_workload(
    events: int,
    leads: int,
    seed: int,
    end_ms: int,
    window_ms: int,
    partitions: int,
    job: Job = "full",
) -> Workload:
    """`events` events over `leads` leads, Zipf-like activity, event times rising to end_ms.

    The full job mixes every event type (TYPE_MIX), 30% of them Segment-shaped; the simple job
    has only its four types (SIMPLE_MIX), all native JSON.
    """
    rng = random.Random(seed)
    profiles = Profiles(seed)
    factory = EventFactory(rng, profiles, segment_share=0.3 if job == "full" else 0.0)
    # Zipf-like activity (exponent 0.6): the busiest lead gets ~0.5% of the events, the median
    # lead a dozen, the quietest a few. Ranks are shuffled over lead ids.
    ranks = list(range(leads))
    rng.shuffle(ranks)
    weights = [1.0 / (r + 1) ** 0.6 for r in ranks]
    cum = list(itertools.accumulate(weights))
    profiled = [i for i in range(leads) if rng.random() < 0.4]
    prof_cum = list(itertools.accumulate(weights[i] for i in profiled))
    types, type_cum = _weighted(TYPE_MIX if job == "full" else SIMPLE_MIX)
    chosen_types = rng.choices(types, cum_weights=type_cum, k=events)
    chosen_leads = rng.choices(range(leads), cum_weights=cum, k=events)
    identifies: Counter[int] = Counter()
    lead_ids = [lead_id_of(i) for i in range(leads)]
    keys = [lid.encode() for lid in lead_ids]
    parts = [partition_of(k, partitions) for k in keys]
    start_ms = end_ms - window_ms
    total_prof = prof_cum[-1]
    messages = []
    by_type: Counter[str] = Counter()
    dumps = orjson.dumps
    for i in range(events):
        event_type = chosen_types[i]
        lead = chosen_leads[i]
        if event_type == "identify":
            lead = profiled[bisect.bisect_left(prof_cum, rng.random() * total_prof)]
        time_ms = start_ms + (i * window_ms) // events
        doc = factory.document(event_type, lead_ids[lead], lead, time_ms, identifies[lead])
        if event_type == "identify":
            identifies[lead] += 1
        by_type[event_type] += 1
        messages.append(
            Message(TOPIC_OF_TYPE[event_type], parts[lead], keys[lead], dumps(doc), time_ms)
        )
    return Workload(
        messages=messages,
        leads=leads,
        start_ms=start_ms,
        end_ms=end_ms,
        by_type=by_type,
        segment_shaped=factory.segment_shaped,
        profiled_leads=len(profiled),
    )


@dataclass
class LiveEvent:
    """One event of the paced stream; its time is set when it is sent."""

    topic: int
    partition: int
    key: bytes
    doc: dict[str, Any]
    event_id: str


class LiveStream:
    """The paced stream for the latency test: background traffic plus designed hot leads.

    A hot lead identifies as an executive of a large company with budget and timeline (fit 80,
    grade A, 3 of 4 BANT), then views /pricing (score 91 >= 90: hot, handoff), then requests a
    demo. Each hot lead hands off exactly once.
    """

    HOT_TRAITS: dict[str, Any] = {
        "title": "CEO",
        "employees": 5000,
        "industry": "software",
        "country": "US",
        "budget": 50000,
        "purchase_timeline": "this_quarter",
    }

    def __init__(self, seed: int, tag: str, partitions: int, background_leads: int) -> None:
        self.rng = random.Random(seed)
        self.tag = tag
        self.partitions = partitions
        self.background_leads = background_leads
        self.factory = EventFactory(self.rng, Profiles(seed))
        types, cum = _weighted(TYPE_MIX[:-1])  # no identify for background leads
        self._types = types
        self._type_cum = cum
        self._hot_seq = 0
        #: hot lead id -> the event that makes it cross into hot (its /pricing view)
        self.triggers: dict[str, str] = {}
        #: hot lead id -> its identify (applied after the /pricing view, it is named instead)
        self.identifies: dict[str, str] = {}

    def _event(
        self, event_type: str, lead_id: str, lead_index: int, path: str | None = None
    ) -> LiveEvent:
        key = lead_id.encode()
        doc = self.factory.document(event_type, lead_id, lead_index, 0, path=path)
        if "messageId" in doc:  # keep the paced stream native, so its time is an int field
            doc = {"event_id": doc["messageId"], "lead_id": lead_id, "type": event_type, "time": 0}
            if path:
                doc["properties"] = {"path": path}
        return LiveEvent(
            TOPIC_OF_TYPE[event_type],
            partition_of(key, self.partitions),
            key,
            doc,
            doc["event_id"],
        )

    def build(self, events: int, hot_leads: int) -> list[LiveEvent]:
        """`events` events in send order, `hot_leads` designed hot sequences spread evenly."""
        rng = self.rng
        out: list[LiveEvent] = []
        hot_every = max(events // max(hot_leads, 1), 4)
        pending: list[tuple[int, LiveEvent]] = []  # (send at index, event)
        for i in range(events):
            if hot_leads and i % hot_every == 0 and i // hot_every < hot_leads:
                self._hot_seq += 1
                lead_id = f"{self.tag}-hot-{self._hot_seq:05d}"
                ident = self._event("identify", lead_id, self._hot_seq)
                ident.doc["traits"] = {**self.HOT_TRAITS, "email": f"{lead_id}@corp.example"}
                self.identifies[lead_id] = ident.event_id
                out.append(ident)
                # Spaced out (~0.1 and ~0.3 of the hot period later) so each is its own event.
                gap = max(hot_every // 10, 1)
                crossing = self._event("page_view", lead_id, 0, "/pricing")
                self.triggers[lead_id] = crossing.event_id
                pending.append((i + gap, crossing))
                pending.append((i + 3 * gap, self._event("demo_request", lead_id, 0)))
                continue
            due = [p for p in pending if p[0] <= i]
            if due:
                pending = [p for p in pending if p[0] > i]
                out.extend(ev for _, ev in due)
                if len(out) >= events:
                    break
            lead = rng.randrange(self.background_leads)
            event_type = rng.choices(self._types, cum_weights=self._type_cum)[0]
            out.append(self._event(event_type, f"{self.tag}-bg-{lead:06d}", lead))
        out.extend(ev for _, ev in pending)
        return out
