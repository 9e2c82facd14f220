"""Prometheus metric definitions, built against an injectable registry so tests get a fresh one."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SCRIPT_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

#: Closed label sets, so a dashboard can rely on them and cardinality stays bounded.
OUTCOMES = ("scored", "rejected", "duplicate", "forgotten")
SCRIPTS = ("commit",)
OPERATIONS = ("redis", "kafka_produce", "kafka_commit")
REDIS_FAILURES = ("transient", "backpressure")
#: Custom track events at intake (runtime.tracking): scored, dropped, or dead-lettered.
TRACK_OUTCOMES = ("accepted", "ignored", "dead_lettered")
#: What became of an identity merge request (runtime.edges, scoring.identity).
IDENTITY_RESULTS = (
    "requested", "merged", "refused_known", "refused_taken", "refused_cycle", "refused_limit",
)  # fmt: skip
ACCOUNT_UPDATE_KINDS = ("member", "leave")
ACCOUNT_UPDATE_RESULTS = ("applied", "stale")
#: A forget found the lead's state (forgotten), found none but an earlier forget
#: (already_forgotten), or found neither (not_found; recorded all the same).
FORGET_RESULTS = ("forgotten", "already_forgotten", "not_found")
OUTCOME_RESULTS = ("applied", "duplicate", "overflow")


@dataclass(frozen=True)
class Metrics:
    """Every metric streamscore exports; names follow Prometheus conventions."""

    registry: CollectorRegistry
    events_total: Counter
    dead_letter_total: Counter
    handoffs_total: Counter
    outcomes_total: Counter
    sla_breaches_total: Counter
    kpi_handoffs: Gauge
    kpi_conversion_ratio: Gauge
    kpi_sla_attainment_ratio: Gauge
    kpi_time_to_touch_seconds: Gauge
    tier_changes_total: Counter
    event_to_scored_seconds: Histogram
    redis_script_seconds: Histogram
    batch_events: Histogram
    retries_total: Counter
    redis_failing: Gauge
    consumer_lag_messages: Gauge
    ready: Gauge
    partitions_assigned: Gauge
    rules_reloads_total: Counter
    rules_version_info: Gauge
    align_buffered_events: Gauge
    fetch_pauses_total: Counter
    partitions_paused: Gauge
    outbox_pending: Gauge
    decay_due_leads: Gauge
    pipeline_stalled_seconds: Gauge
    handoff_visible_seconds: Histogram
    track_events_total: Counter
    identity_merges_total: Counter
    identity_forwarded_total: Counter
    account_updates_total: Counter
    account_handoffs_total: Counter
    forget_requests_total: Counter
    forgotten_dropped_total: Counter


def _ms_within(bound_s: float) -> int:
    """The most whole milliseconds m with m / 1000 <= bound_s, as observe() compares."""
    m = math.floor(bound_s * 1000.0)
    while (m + 1) / 1000.0 <= bound_s:
        m += 1
    while m / 1000.0 > bound_s:
        m -= 1
    return m


def observe_since(histogram: Histogram, done_ms: int, started_ms: Sequence[int]) -> None:
    """Observe done_ms - t (seconds, at least 0) for every t, in one pass per bucket.

    A batch's thousands of events share done_ms: sorting their start times (in C) and
    bisecting at each bucket's bound replaces one observe() per event, which cost a worker
    about 1 us an event. Falls back to observe() on a client library without the internals.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for t in started_ms:
            histogram.observe(max(done_ms - t, 0) / 1000.0)
        return
    starts = sorted(started_ms)
    n = len(starts)
    # A start at or after done_ms is a latency of 0; the others sum to k * done - their sum.
    k = bisect_left(starts, done_ms)
    total.inc((k * done_ms - sum(starts[:k])) / 1000.0)
    counted = 0
    for bound, bucket in zip(bounds, buckets, strict=True):
        # done - t <= bound  <=>  t >= done - (the most whole ms m with m / 1000 <= bound).
        at_most = n if bound == math.inf else n - bisect_left(starts, done_ms - _ms_within(bound))
        if at_most > counted:
            bucket.inc(at_most - counted)
            counted = at_most
        if counted == n:
            break


def create_metrics(registry: CollectorRegistry | None = None, *, process: bool = True) -> Metrics:
    """Create the metric set in `registry` (a fresh one when omitted)."""
    reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
    if process:
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
    return Metrics(
        registry=reg,
        events_total=Counter(
            "streamscore_events_total",
            "Input events handled, by source topic and outcome (scored, rejected, duplicate, "
            "forgotten).",
            ["topic", "outcome"],
            registry=reg,
        ),
        dead_letter_total=Counter(
            "streamscore_dead_letter_total",
            "Events sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=reg,
        ),
        handoffs_total=Counter(
            "streamscore_handoffs_total",
            "Handoff events emitted, by tier handed off and model (live, an A/B arm, a shadow).",
            ["tier", "model"],
            registry=reg,
        ),
        outcomes_total=Counter(
            "streamscore_outcomes_total",
            "Sales outcomes committed, by type and result (applied, duplicate: an outcome id "
            "already seen, overflow: past the per-lead limit).",
            ["type", "result"],
            registry=reg,
        ),
        sla_breaches_total=Counter(
            "streamscore_sla_breaches_total",
            "Handoffs whose first-touch deadline passed with no touch, by tier at handoff.",
            ["tier"],
            registry=reg,
        ),
        kpi_handoffs=Gauge(
            "streamscore_kpi_handoffs",
            "Handoffs counted in the sales-outcome KPIs, by model, rules version and tier at "
            "handoff (read from the stored counters every kpi_refresh_s).",
            ["model", "rules_version", "tier"],
            registry=reg,
        ),
        kpi_conversion_ratio=Gauge(
            "streamscore_kpi_conversion_ratio",
            "Share of handoffs whose lead reached the stage (accepted, rejected, touched, "
            "opportunity, won, lost), by model, rules version and tier at handoff.",
            ["model", "rules_version", "tier", "stage"],
            registry=reg,
        ),
        kpi_sla_attainment_ratio=Gauge(
            "streamscore_kpi_sla_attainment_ratio",
            "Share of settled first-touch deadlines that were met, by model, rules version, tier.",
            ["model", "rules_version", "tier"],
            registry=reg,
        ),
        kpi_time_to_touch_seconds=Gauge(
            "streamscore_kpi_time_to_touch_seconds",
            "Time from handoff to first touch (interpolated from buckets), by model, rules "
            "version, tier and percentile (50, 90).",
            ["model", "rules_version", "tier", "percentile"],
            registry=reg,
        ),
        tier_changes_total=Counter(
            "streamscore_tier_changes_total",
            "Tier changes emitted, by direction (up, down), new tier and model.",
            ["direction", "tier", "model"],
            registry=reg,
        ),
        event_to_scored_seconds=Histogram(
            "streamscore_event_to_scored_seconds",
            "Time from an event's append to the broker to its state applied in Redis.",
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        ),
        redis_script_seconds=Histogram(
            "streamscore_redis_script_seconds",
            "Duration of one Redis Lua script call, by script (commit: one key group's share "
            "of a batch or a tick).",
            ["script"],
            buckets=SCRIPT_BUCKETS_S,
            registry=reg,
        ),
        batch_events=Histogram(
            "streamscore_batch_events",
            "Number of events in each batch committed to Redis.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
            registry=reg,
        ),
        retries_total=Counter(
            "streamscore_retries_total",
            "Retries of transient failures, by operation.",
            ["operation"],
            registry=reg,
        ),
        redis_failing=Gauge(
            "streamscore_redis_failing",
            "1 while Redis calls fail with this class of failure: transient (connection, "
            "timeout, failover; retried within redis_retry_max_s) or backpressure (out of "
            "memory; retried until it passes).",
            ["failure"],
            registry=reg,
        ),
        consumer_lag_messages=Gauge(
            "streamscore_consumer_lag_messages",
            "Messages behind the high watermark, summed over assigned partitions, by topic.",
            ["topic"],
            registry=reg,
        ),
        ready=Gauge(
            "streamscore_ready",
            "1 when partitions are assigned and Redis is reachable, else 0.",
            registry=reg,
        ),
        partitions_assigned=Gauge(
            "streamscore_partitions_assigned",
            "Input partitions currently assigned to this worker.",
            registry=reg,
        ),
        rules_reloads_total=Counter(
            "streamscore_rules_reloads_total",
            "Rules file reload attempts, by result (applied, rejected).",
            ["result"],
            registry=reg,
        ),
        rules_version_info=Gauge(
            "streamscore_rules_version_info",
            "The rules version in force (value is always 1).",
            ["version"],
            registry=reg,
        ),
        align_buffered_events=Gauge(
            "streamscore_align_buffered_events",
            "Valid events fetched and waiting in the aligner for their turn in event-time order.",
            registry=reg,
        ),
        fetch_pauses_total=Counter(
            "streamscore_fetch_pauses_total",
            "Times a partition's fetching was paused because the aligner held enough of it.",
            registry=reg,
        ),
        partitions_paused=Gauge(
            "streamscore_partitions_paused",
            "Assigned partitions whose fetching is paused because the aligner holds enough.",
            registry=reg,
        ),
        outbox_pending=Gauge(
            "streamscore_outbox_pending",
            "Output events recorded in Redis but not yet acknowledged by the broker.",
            registry=reg,
        ),
        decay_due_leads=Gauge(
            "streamscore_decay_due_leads",
            "Leads whose inactivity tier drop is due and not yet processed.",
            registry=reg,
        ),
        pipeline_stalled_seconds=Gauge(
            "streamscore_pipeline_stalled_seconds",
            "How long events have been in flight without a batch being committed to Redis "
            "(0 while scoring progresses or nothing is waiting).",
            registry=reg,
        ),
        handoff_visible_seconds=Histogram(
            "streamscore_handoff_visible_seconds",
            "Time from a handoff being scored to the broker acknowledging it on the handoff topic "
            "(readable by consumers from then on).",
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        ),
        track_events_total=Counter(
            "streamscore_track_events_total",
            "Custom track events at intake, by name (the names the rules give; any other is "
            "`other`) and outcome (accepted for scoring, ignored, dead_lettered).",
            ["event", "outcome"],
            registry=reg,
        ),
        identity_merges_total=Counter(
            "streamscore_identity_merges_total",
            "Identity merges by step: requested (by the known lead's owner), merged (applied "
            "once to the known lead), refused_* (known: the other lead is known; taken: it "
            "was merged elsewhere; cycle; limit: identity_max_links).",
            ["result"],
            registry=reg,
        ),
        identity_forwarded_total=Counter(
            "streamscore_identity_forwarded_total",
            "Events of a merged id forwarded to the lead it was merged into.",
            registry=reg,
        ),
        account_updates_total=Counter(
            "streamscore_account_updates_total",
            "Lead contributions applied by the account's owner, by kind (member, leave) and "
            "result (applied, stale: an older or repeated contribution, ignored).",
            ["kind", "result"],
            registry=reg,
        ),
        account_handoffs_total=Counter(
            "streamscore_account_handoffs_total",
            "Account handoffs emitted, by account tier.",
            ["tier"],
            registry=reg,
        ),
        forget_requests_total=Counter(
            "streamscore_forget_requests_total",
            "Forgets applied through the worker's DELETE /leads/{id}, by result (forgotten, "
            "already_forgotten, not_found).",
            ["result"],
            registry=reg,
        ),
        forgotten_dropped_total=Counter(
            "streamscore_forgotten_dropped_total",
            "Records dropped because their lead was forgotten after their event time (a "
            "replay, a redelivery, a late event).",
            registry=reg,
        ),
    )


METRIC_NAMES: tuple[str, ...] = (
    "streamscore_events_total",
    "streamscore_dead_letter_total",
    "streamscore_handoffs_total",
    "streamscore_tier_changes_total",
    "streamscore_outcomes_total",
    "streamscore_sla_breaches_total",
    "streamscore_kpi_handoffs",
    "streamscore_kpi_conversion_ratio",
    "streamscore_kpi_sla_attainment_ratio",
    "streamscore_kpi_time_to_touch_seconds",
    "streamscore_event_to_scored_seconds",
    "streamscore_redis_script_seconds",
    "streamscore_batch_events",
    "streamscore_retries_total",
    "streamscore_redis_failing",
    "streamscore_consumer_lag_messages",
    "streamscore_ready",
    "streamscore_partitions_assigned",
    "streamscore_align_buffered_events",
    "streamscore_fetch_pauses_total",
    "streamscore_partitions_paused",
    "streamscore_rules_reloads_total",
    "streamscore_rules_version_info",
    "streamscore_outbox_pending",
    "streamscore_decay_due_leads",
    "streamscore_pipeline_stalled_seconds",
    "streamscore_handoff_visible_seconds",
    "streamscore_track_events_total",
    "streamscore_identity_merges_total",
    "streamscore_identity_forwarded_total",
    "streamscore_account_updates_total",
    "streamscore_account_handoffs_total",
    "streamscore_forget_requests_total",
    "streamscore_forgotten_dropped_total",
)


#: Closed label sets of the collector's metrics.
COLLECTOR_ENDPOINTS = (
    "track", "page", "screen", "identify", "alias", "group", "batch",
    "metrics", "healthz", "readyz", "other",
)  # fmt: skip
COLLECTOR_STATUSES = ("200", "204", "400", "401", "403", "404", "405", "413", "415", "429", "503")
COLLECTOR_ENCODINGS = ("identity", "gzip")
REQUEST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class CollectorMetrics:
    """The metrics of `streamscore collector`; label values come from closed sets."""

    registry: CollectorRegistry
    requests_total: Counter
    request_seconds: Histogram
    events_total: Counter
    received_bytes_total: Counter
    produced_bytes_total: Counter
    rejected_total: Counter
    pending_events: Gauge
    ready: Gauge
    retries_total: Counter


def create_collector_metrics(
    registry: CollectorRegistry | None = None, *, process: bool = True
) -> CollectorMetrics:
    """Create the collector's metric set in `registry` (a fresh one when omitted)."""
    reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
    if process:
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
    return CollectorMetrics(
        registry=reg,
        requests_total=Counter(
            "streamscore_collector_requests_total",
            "HTTP requests answered, by endpoint (short aliases count as their long form, "
            "import as batch) and status code.",
            ["endpoint", "status"],
            registry=reg,
        ),
        request_seconds=Histogram(
            "streamscore_collector_request_seconds",
            "Time from a request's arrival to its answer (for a 200: the broker's acks), "
            "by endpoint.",
            ["endpoint"],
            buckets=REQUEST_BUCKETS_S,
            registry=reg,
        ),
        events_total=Counter(
            "streamscore_collector_events_total",
            "Events acknowledged by the broker, by Segment type and the input topic's kind.",
            ["type", "topic_kind"],
            registry=reg,
        ),
        received_bytes_total=Counter(
            "streamscore_collector_received_bytes_total",
            "Request body bytes as received on the wire, by Content-Encoding.",
            ["encoding"],
            registry=reg,
        ),
        produced_bytes_total=Counter(
            "streamscore_collector_produced_bytes_total",
            "Message value bytes acknowledged by the broker.",
            registry=reg,
        ),
        rejected_total=Counter(
            "streamscore_collector_rejected_requests_total",
            "Requests answered with an error, by reason (the `code` of the error body).",
            ["reason"],
            registry=reg,
        ),
        pending_events=Gauge(
            "streamscore_collector_pending_events",
            "Events handed to the producer and not yet acknowledged or failed.",
            registry=reg,
        ),
        ready=Gauge(
            "streamscore_collector_ready",
            "1 when the producer is connected and the collector accepts events, else 0.",
            registry=reg,
        ),
        retries_total=Counter(
            "streamscore_collector_retries_total",
            "Retries of transient broker failures at start, by operation.",
            ["operation"],
            registry=reg,
        ),
    )


COLLECTOR_METRIC_NAMES: tuple[str, ...] = (
    "streamscore_collector_requests_total",
    "streamscore_collector_request_seconds",
    "streamscore_collector_events_total",
    "streamscore_collector_received_bytes_total",
    "streamscore_collector_produced_bytes_total",
    "streamscore_collector_rejected_requests_total",
    "streamscore_collector_pending_events",
    "streamscore_collector_ready",
    "streamscore_collector_retries_total",
)
