"""The delivery service's metrics (`streamscore_delivery_*`) and the sensor hooks that feed them.

Labels come from closed sets: a webhook is labelled by its index in delivery_webhook_urls (a
URL may hold a secret, and a lead id is never a label). As in runtime/sensors.py, every label
value of a closed set gets a zero sample at start, so `increase()` sees the first increment.
"""

from __future__ import annotations

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

from streamscore.delivery.policy import DEAD_LETTER_REASONS, Outcome
from streamscore.metrics import LATENCY_BUCKETS_S


@dataclass(frozen=True)
class DeliveryMetrics:
    """Every metric the delivery service exports."""

    registry: CollectorRegistry
    requests_total: Counter
    request_seconds: Histogram
    retries_total: Counter
    dead_letters_total: Counter
    in_flight: Gauge
    ready: Gauge


def create_delivery_metrics(
    registry: CollectorRegistry | None = None, *, process: bool = True
) -> DeliveryMetrics:
    """Create the delivery metric set in `registry` (a fresh one when omitted)."""
    reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
    if process:
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
    return DeliveryMetrics(
        registry=reg,
        requests_total=Counter(
            "streamscore_delivery_requests_total",
            "Webhook requests, by webhook index and outcome (delivered, timeout, "
            "connection_error, rate_limited, server_error, redirected, rejected).",
            ["webhook", "outcome"],
            registry=reg,
        ),
        request_seconds=Histogram(
            "streamscore_delivery_request_seconds",
            "Duration of one webhook request, from sending to the answer or the failure.",
            ["webhook"],
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        ),
        retries_total=Counter(
            "streamscore_delivery_retries_total",
            "Webhook requests retried after a retryable failure, by webhook index.",
            ["webhook"],
            registry=reg,
        ),
        dead_letters_total=Counter(
            "streamscore_delivery_dead_letters_total",
            "Records sent to the delivery dead-letter topic, by reason.",
            ["reason"],
            registry=reg,
        ),
        in_flight=Gauge(
            "streamscore_delivery_in_flight",
            "Handoffs fetched and not yet delivered or dead-lettered (their offsets are held).",
            registry=reg,
        ),
        ready=Gauge(
            "streamscore_delivery_ready",
            "1 while the delivery service consumes (partitions of the handoff topic assigned).",
            registry=reg,
        ),
    )


DELIVERY_METRIC_NAMES: tuple[str, ...] = (
    "streamscore_delivery_requests_total",
    "streamscore_delivery_request_seconds",
    "streamscore_delivery_retries_total",
    "streamscore_delivery_dead_letters_total",
    "streamscore_delivery_in_flight",
    "streamscore_delivery_ready",
)


class DeliverySensor:
    """Hooks of the delivery service, all no-ops: subclass and override what you observe."""

    def request_done(self, webhook: int, outcome: Outcome, seconds: float) -> None:
        """One request to webhook number `webhook` ended with `outcome` after `seconds`."""

    def retrying(self, webhook: int) -> None:
        """A failed request to webhook number `webhook` will be tried again."""

    def dead_lettered(self, reason: str) -> None:
        """One record went to the delivery dead-letter topic (acknowledged by the broker)."""

    def in_flight(self, handoffs: int) -> None:
        """Handoffs fetched whose delivery is not finished."""

    def readiness(self, ready: bool) -> None:
        """The service started or stopped consuming."""


class PrometheusDeliverySensor(DeliverySensor):
    """Records every hook in the streamscore_delivery_* metrics."""

    def __init__(self, metrics: DeliveryMetrics, webhooks: int) -> None:
        self.metrics = metrics
        for index in range(webhooks):
            label = str(index)
            metrics.request_seconds.labels(webhook=label)
            metrics.retries_total.labels(webhook=label)
            for outcome in Outcome:
                metrics.requests_total.labels(webhook=label, outcome=outcome.value)
        for reason in DEAD_LETTER_REASONS:
            metrics.dead_letters_total.labels(reason=reason)
        metrics.in_flight.set(0)
        metrics.ready.set(0)

    def request_done(self, webhook: int, outcome: Outcome, seconds: float) -> None:
        label = str(webhook)
        self.metrics.requests_total.labels(webhook=label, outcome=outcome.value).inc()
        self.metrics.request_seconds.labels(webhook=label).observe(seconds)

    def retrying(self, webhook: int) -> None:
        self.metrics.retries_total.labels(webhook=str(webhook)).inc()

    def dead_lettered(self, reason: str) -> None:
        self.metrics.dead_letters_total.labels(reason=reason).inc()

    def in_flight(self, handoffs: int) -> None:
        self.metrics.in_flight.set(handoffs)

    def readiness(self, ready: bool) -> None:
        self.metrics.ready.set(1 if ready else 0)
