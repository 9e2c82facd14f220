"""Handoff latency at fixed input rates: paced producer, handoff consumer, worker histogram."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from benchmarks.workload import LiveEvent, LiveStream
from streamscore.events.timefmt import parse_time_ms

#: The producers' lingers the phase tries: a tracker SDK or collector flushing small batches
#: (5 ms), and one batching for 100 ms. Latency is measured from the append, so the linger is not
#: in it; it sets how many record batches the broker stores (see benchmarks/README.md).
DEFAULT_LINGERS_MS = (5, 100)
SCORED_HISTOGRAM = "streamscore_event_to_scored_seconds"
VISIBLE_HISTOGRAM = "streamscore_handoff_visible_seconds"
#: Width of the slices the append->handoff p50 is reported over, to show drift within a run.
DRIFT_SLICE_S = 20.0


@dataclass
class RateResult:
    """Latency figures for one input rate."""

    linger_ms: int
    target_rate: float
    achieved_rate: float
    seconds: float
    events: int
    hot_leads: int
    handoffs: int
    handoffs_unmatched: int
    # Designed hot leads whose handoff never arrived, and handoffs naming another event than
    # the one that made the lead cross (the /pricing view).
    never_arrived: int
    wrong_trigger: int
    wrong_trigger_identify: int  # of which named the lead's identify
    # From the broker's append (the producer's ack) to the handoff read off its topic.
    p50_ms: float
    p99_ms: float
    max_ms: float
    # From the record's create time (set when the tracker called produce(), before its linger).
    p50_from_create_ms: float
    p99_from_create_ms: float
    p50_by_slice_ms: list[float]  # append->handoff p50 per DRIFT_SLICE_S of sending
    scored_p50_ms: float
    scored_p99_ms: float
    scored_count: int
    # The worker's own streamscore_handoff_visible_seconds over the same window, and the same
    # span as this consumer sees it: from the handoff's scored_at to reading it.
    visible_p50_ms: float
    visible_p99_ms: float
    visible_count: int
    consumer_visible_p50_ms: float
    consumer_visible_p99_ms: float
    cpu_cores: dict[str, float]  # CPU seconds per second while the input was paced
    events_per_apply: float  # worker metrics over the rate's window
    ms_per_apply: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(int(-(-q * len(ordered) // 100)), 1)  # ceil(q/100 * n), at least 1
    return ordered[min(rank, len(ordered)) - 1]


def scrape_histograms(metrics_url: str, names: Sequence[str]) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts of unlabelled histograms, by name and upper bound."""
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[float, float]] = {}
    for name in names:
        pattern = re.compile(rf'^{re.escape(name)}_bucket\{{le="([^"]+)"\}} (\S+)$', re.M)
        out[name] = {float(le): float(n) for le, n in pattern.findall(text)}
    return out


def scrape_worker_metrics(metrics_url: str) -> dict[str, float]:
    """Batch and script figures of a worker: events per batch and commit seconds per batch."""
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    wanted = {
        "streamscore_batch_events_sum": "batch_events_sum",
        "streamscore_batch_events_count": "apply_calls",
        'streamscore_redis_script_seconds_sum{script="commit"}': "apply_seconds_sum",
    }
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    calls = out.get("apply_calls", 0.0)
    if calls:
        out["events_per_apply"] = out.get("batch_events_sum", 0.0) / calls
        out["ms_per_apply"] = out.get("apply_seconds_sum", 0.0) / calls * 1000.0
    return out


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Prometheus-style quantile (linear within a bucket) of the observations between scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            inside = count - prev_count
            frac = (rank - prev_count) / inside if inside > 0 else 1.0
            return prev_bound + (bound - prev_bound) * frac
        prev_bound, prev_count = bound, count
    return prev_bound


class LatencyProbe:
    """Paced producer and handoff consumer sharing one thread (no GIL contention between them)."""

    def __init__(
        self,
        bootstrap: str,
        input_topics: Sequence[str],
        handoff_topic: str,
        linger_ms: int,
    ) -> None:
        self.input_topics = list(input_topics)
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": linger_ms, "acks": "all", "log_level": 3}
        )
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-handoff-probe-{time.monotonic_ns()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
                "fetch.min.bytes": 1,
                "log_level": 3,
            }
        )
        self.handoff_topic = handoff_topic
        # event id -> (record create time ms, ack wall-clock ms). The ack is seen in poll(),
        # at most one loop turn (about 1 ms) after it arrived.
        self.acks: dict[str, tuple[int, float]] = {}
        # (lead id, triggering event id, consumed wall-clock ms)
        self.handoffs: list[tuple[str, str, float]] = []
        # consumed wall-clock ms minus the handoff's scored_at, by lead id
        self.visible_ms: dict[str, float] = {}
        self.errors: list[str] = []

    def assign(self, partitions: int) -> None:
        """Read the handoff topic from its start."""
        self.consumer.assign(
            [TopicPartition(self.handoff_topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        )

    def _on_delivery(self, event_id: str, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        self.acks[event_id] = (msg.timestamp()[1], time.time() * 1000.0)

    def _consume(self, timeout_s: float) -> None:
        for msg in self.consumer.consume(1000, timeout_s):
            value = msg.value()
            if msg.error() is not None or value is None:
                continue
            seen_ms = time.time() * 1000.0
            body = orjson.loads(value)
            self.handoffs.append((body["lead_id"], body["triggering_event_id"], seen_ms))
            self.visible_ms[body["lead_id"]] = seen_ms - parse_time_ms(body["scored_at"])

    def send_paced(self, events: Sequence[LiveEvent], rate: float) -> tuple[float, float]:
        """Send events at `rate` per second (each stamped with its send time); returns (s, rate)."""
        produce, poll = self.producer.produce, self.producer.poll
        topics = self.input_topics
        started = time.monotonic()
        sent = 0
        n = len(events)
        while sent < n:
            target = min(int((time.monotonic() - started) * rate) + 1, n)
            while sent < target:
                ev = events[sent]
                ev.doc["time"] = time.time_ns() // 1_000_000
                while True:
                    try:
                        produce(
                            topics[ev.topic],
                            orjson.dumps(ev.doc),
                            ev.key,
                            partition=ev.partition,
                            on_delivery=partial(self._on_delivery, ev.event_id),
                        )
                        break
                    except BufferError:
                        poll(0.001)
                sent += 1
            poll(0)
            self._consume(0.001)
        elapsed = time.monotonic() - started
        self.producer.flush(30)
        return elapsed, n / elapsed

    def drain(self, want: int, prefix: str, timeout_s: float) -> None:
        """Keep reading handoffs until `want` of leads with `prefix` arrived, or the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.producer.poll(0)
            self._consume(0.05)
            if sum(1 for lead, _, _ in self.handoffs if lead.startswith(prefix)) >= want:
                return

    def close(self) -> None:
        """Flush and close both clients."""
        self.producer.flush(10)
        self.consumer.close()


def measure_rate(
    probe: LatencyProbe,
    metrics_url: str,
    linger_ms: int,
    rate: float,
    seconds: float,
    hot_leads: int,
    seed: int,
    tag: str,
    partitions: int,
    cpu: Callable[[], dict[str, float]] | None = None,
) -> RateResult:
    """Pace `rate` events/s for `seconds`, then match each handoff to its triggering event."""
    stream = LiveStream(seed, tag, partitions, background_leads=max(int(rate * seconds), 1000))
    events = stream.build(int(rate * seconds), hot_leads)
    names = (SCORED_HISTOGRAM, VISIBLE_HISTOGRAM)
    before = scrape_histograms(metrics_url, names)
    applies_before = scrape_worker_metrics(metrics_url)
    cpu_before = cpu() if cpu else {}
    started_ms = time.time() * 1000.0
    elapsed, achieved = probe.send_paced(events, rate)
    cpu_after = cpu() if cpu else {}
    cores = {k: (cpu_after[k] - v) / elapsed for k, v in cpu_before.items() if k in cpu_after}
    if "all" in cores:
        # Whatever else ran on the machine meanwhile (other users' processes).
        cores["others"] = max(cores["all"] - sum(v for k, v in cores.items() if k != "all"), 0.0)
    # An overloaded worker catches up after the input stops; wait for it (bounded).
    probe.drain(hot_leads, f"{tag}-hot-", timeout_s=max(15.0, 3 * seconds))
    time.sleep(0.5)  # let the worker observe the last events' histogram samples
    after = scrape_histograms(metrics_url, names)
    applies_after = scrape_worker_metrics(metrics_url)
    calls = applies_after.get("apply_calls", 0.0) - applies_before.get("apply_calls", 0.0)
    applied = applies_after.get("batch_events_sum", 0.0) - applies_before.get(
        "batch_events_sum", 0.0
    )
    apply_s = applies_after.get("apply_seconds_sum", 0.0) - applies_before.get(
        "apply_seconds_sum", 0.0
    )
    from_create, from_ack = [], []
    slices: dict[int, list[float]] = {}
    unmatched = 0
    handoffs = [(lead, trig, seen) for lead, trig, seen in probe.handoffs if lead.startswith(tag)]
    arrived = {lead for lead, _, _ in handoffs}
    wrong = sum(1 for lead, trig, _ in handoffs if stream.triggers.get(lead, trig) != trig)
    named_identify = sum(1 for lead, trig, _ in handoffs if stream.identifies.get(lead) == trig)
    for _, trig, seen in handoffs:
        ack = probe.acks.get(trig)
        if ack is None:
            unmatched += 1
            continue
        from_create.append(seen - ack[0])
        from_ack.append(seen - ack[1])
        slices.setdefault(int((ack[1] - started_ms) / 1000.0 // DRIFT_SLICE_S), []).append(
            seen - ack[1]
        )
    seen_after_scored = [probe.visible_ms[lead] for lead in arrived if lead in probe.visible_ms]
    scored_before, scored_after = before[SCORED_HISTOGRAM], after[SCORED_HISTOGRAM]
    visible_before, visible_after = before[VISIBLE_HISTOGRAM], after[VISIBLE_HISTOGRAM]
    inf = float("inf")
    return RateResult(
        linger_ms=linger_ms,
        target_rate=rate,
        achieved_rate=achieved,
        seconds=elapsed,
        events=len(events),
        hot_leads=len(stream.triggers),
        handoffs=len(handoffs),
        handoffs_unmatched=unmatched,
        never_arrived=len(stream.triggers.keys() - arrived),
        wrong_trigger=wrong,
        wrong_trigger_identify=named_identify,
        p50_ms=percentile(from_ack, 50),
        p99_ms=percentile(from_ack, 99),
        max_ms=max(from_ack) if from_ack else float("nan"),
        p50_from_create_ms=percentile(from_create, 50),
        p99_from_create_ms=percentile(from_create, 99),
        p50_by_slice_ms=[percentile(slices[k], 50) for k in sorted(slices)],
        scored_p50_ms=histogram_quantile(scored_before, scored_after, 0.50) * 1000.0,
        scored_p99_ms=histogram_quantile(scored_before, scored_after, 0.99) * 1000.0,
        scored_count=int(scored_after.get(inf, 0.0) - scored_before.get(inf, 0.0)),
        visible_p50_ms=histogram_quantile(visible_before, visible_after, 0.50) * 1000.0,
        visible_p99_ms=histogram_quantile(visible_before, visible_after, 0.99) * 1000.0,
        visible_count=int(visible_after.get(inf, 0.0) - visible_before.get(inf, 0.0)),
        consumer_visible_p50_ms=percentile(seen_after_scored, 50),
        consumer_visible_p99_ms=percentile(seen_after_scored, 99),
        cpu_cores=cores,
        events_per_apply=applied / calls if calls else float("nan"),
        ms_per_apply=apply_s / calls * 1000.0 if calls else float("nan"),
    )
