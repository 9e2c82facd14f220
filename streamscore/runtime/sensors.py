"""Sensors: the hooks the runtime calls at each step; the Prometheus sensor turns them into metrics.

The loop says what happened (`batch_applied`, `dead_lettered`, ...) and never touches a metric
itself, as Faust's sensors do. The Prometheus sensor also exports a zero sample for every label
value of a closed set as soon as it exists, so that `increase()` sees the first event: a counter
that first appears at 1 has no increase, and alert rules written on it never fire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from streamscore.events import REJECT_REASONS
from streamscore.metrics import (
    ACCOUNT_UPDATE_KINDS,
    ACCOUNT_UPDATE_RESULTS,
    FORGET_RESULTS,
    IDENTITY_RESULTS,
    OPERATIONS,
    OUTCOME_RESULTS,
    OUTCOMES,
    REDIS_FAILURES,
    SCRIPTS,
    TRACK_OUTCOMES,
    Metrics,
    observe_since,
)
from streamscore.outcomes.events import OutcomeType
from streamscore.outcomes.kpi import Kpis

#: The label every track event name the rules do not give counts under (runtime.tracking).
OTHER_TRACK_EVENT = "other"


class Sensor:
    """Hooks of the runtime, all no-ops: subclass and override what you observe."""

    def partitions_assigned(self, count: int) -> None:
        """The number of input partitions this worker owns changed."""

    def readiness(self, ready: bool) -> None:
        """The worker became ready (partitions assigned, Redis reachable) or stopped being so."""

    def consumer_lag(self, topic: str, messages: int) -> None:
        """Messages behind the high watermark, summed over this worker's partitions of `topic`."""

    def aligner_state(self, buffered: int, paused: int, newly_paused: int) -> None:
        """Events held by the aligner, partitions paused, and pauses made by the last step."""

    def dead_lettered(self, topic: str, reason: str) -> None:
        """One input message was rejected and sent to the dead-letter topic."""

    def batch_applied(
        self, outcomes: Mapping[tuple[str, str], int], append_ms: Sequence[int], done_ms: int
    ) -> None:
        """A batch's effects are safe: events by (topic, outcome), and their append times."""

    def redis_call(self, script: str, seconds: float) -> None:
        """One script call returned after `seconds`."""

    def funnel_facts(
        self, outcomes: Mapping[tuple[str, str], int], breaches: Mapping[str, int]
    ) -> None:
        """A batch's sales outcomes by (type, result) and SLA breaches by tier are committed."""

    def output_emitted(self, kind: str, new_tier: str, direction: str, model: str) -> None:
        """A handoff or tier change of `model` was handed to the producer."""

    def models(self, names: Iterable[str]) -> None:
        """The scoring models this worker runs (the live one, A/B arms, shadows)."""

    def kpis(self, kpis: Kpis) -> None:
        """The sales-outcome KPIs, as read from the stored counters."""

    def retried(self, operation: str) -> None:
        """A transient failure of `operation` is being retried."""

    def redis_state(self, state: str) -> None:
        """Redis became `ok`, or is failing with a `transient` or `backpressure` failure."""

    def rules_loaded(
        self, version: str, tiers: Iterable[str], result: str, primary: bool = True
    ) -> None:
        """Rules came into force (result `initial` or `applied`) or a reload was `rejected`;
        `primary` for the live rules, not an A/B arm's or a shadow model's."""

    def outbox_pending(self, entries: int) -> None:
        """Outputs recorded in Redis and not yet acknowledged by the broker."""

    def pipeline_stalled(self, seconds: float) -> None:
        """Work has been in flight this long without a batch being committed (0: progressing)."""

    def decay_due(self, leads: int) -> None:
        """Leads whose inactivity drop is due and not yet applied."""

    def handoff_visible(self, seconds: float) -> None:
        """A handoff was read back from its topic `seconds` after it was scored."""

    def track_names(self, names: Iterable[str]) -> None:
        """Rules came into force that name these custom track events."""

    def track_events(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Custom track events judged at intake, by (name label, outcome)."""

    def edges_applied(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Cross-lead work a batch committed, by (what, label): ("identity", result),
        ("forwarded", ""), ("account_member" | "account_leave", result), ("account_handoff",
        tier), ("forget", result), ("forgotten_dropped", "")."""


class PrometheusSensor(Sensor):
    """Records every hook in the streamscore_* metrics of `metrics`."""

    def __init__(self, metrics: Metrics, input_topics: Iterable[str]) -> None:
        self.metrics = metrics
        m = metrics
        for topic in input_topics:
            m.consumer_lag_messages.labels(topic=topic).set(0)
            for outcome in OUTCOMES:
                m.events_total.labels(topic=topic, outcome=outcome)
        for reason in REJECT_REASONS:
            m.dead_letter_total.labels(reason=reason)
        for kind in OutcomeType:
            for result in OUTCOME_RESULTS:
                m.outcomes_total.labels(type=kind.value, result=result)
        for operation in OPERATIONS:
            m.retries_total.labels(operation=operation)
        for script in SCRIPTS:
            m.redis_script_seconds.labels(script=script)
        for result in ("applied", "rejected"):
            m.rules_reloads_total.labels(result=result)
        for verdict in TRACK_OUTCOMES:
            m.track_events_total.labels(event=OTHER_TRACK_EVENT, outcome=verdict)
        for result in IDENTITY_RESULTS:
            m.identity_merges_total.labels(result=result)
        for update in ACCOUNT_UPDATE_KINDS:
            for result in ACCOUNT_UPDATE_RESULTS:
                m.account_updates_total.labels(kind=update, result=result)
        for result in FORGET_RESULTS:
            m.forget_requests_total.labels(result=result)
        self.redis_state("ok")
        self._models: tuple[str, ...] = ("live",)
        self._tiers: tuple[str, ...] = ()
        m.ready.set(0)

    def partitions_assigned(self, count: int) -> None:
        self.metrics.partitions_assigned.set(count)

    def readiness(self, ready: bool) -> None:
        self.metrics.ready.set(1 if ready else 0)

    def consumer_lag(self, topic: str, messages: int) -> None:
        self.metrics.consumer_lag_messages.labels(topic=topic).set(messages)

    def aligner_state(self, buffered: int, paused: int, newly_paused: int) -> None:
        self.metrics.align_buffered_events.set(buffered)
        self.metrics.partitions_paused.set(paused)
        if newly_paused:
            self.metrics.fetch_pauses_total.inc(newly_paused)

    def dead_lettered(self, topic: str, reason: str) -> None:
        self.metrics.dead_letter_total.labels(reason=reason).inc()
        self.metrics.events_total.labels(topic=topic, outcome="rejected").inc()

    def batch_applied(
        self, outcomes: Mapping[tuple[str, str], int], append_ms: Sequence[int], done_ms: int
    ) -> None:
        observe_since(self.metrics.event_to_scored_seconds, done_ms, append_ms)
        # Once a batch, however many lanes and key groups its commit calls were.
        self.metrics.batch_events.observe(len(append_ms))
        for (topic, outcome), n in outcomes.items():
            self.metrics.events_total.labels(topic=topic, outcome=outcome).inc(n)

    def redis_call(self, script: str, seconds: float) -> None:
        self.metrics.redis_script_seconds.labels(script=script).observe(seconds)

    def funnel_facts(
        self, outcomes: Mapping[tuple[str, str], int], breaches: Mapping[str, int]
    ) -> None:
        for (kind, result), n in outcomes.items():
            self.metrics.outcomes_total.labels(type=kind, result=result).inc(n)
        for tier, n in breaches.items():
            self.metrics.sla_breaches_total.labels(tier=tier).inc(n)

    def kpis(self, kpis: Kpis) -> None:
        m = self.metrics
        for gauge in (
            m.kpi_handoffs, m.kpi_conversion_ratio, m.kpi_sla_attainment_ratio,
            m.kpi_time_to_touch_seconds,
        ):  # fmt: skip
            gauge.clear()  # a rules version no longer counted leaves no stale series
        for cohort in kpis.cohorts:
            for t in (*cohort.by_tier, cohort.total):
                labels = (cohort.model, cohort.rules_version, t.tier)
                m.kpi_handoffs.labels(*labels).set(t.handoffs)
                for stage in ("accepted", "rejected", "touched", "opportunity", "won", "lost"):
                    value = getattr(t, stage).value
                    if value is not None:
                        m.kpi_conversion_ratio.labels(*labels, stage).set(value)
                if t.sla.attainment.value is not None:
                    m.kpi_sla_attainment_ratio.labels(*labels).set(t.sla.attainment.value)
                for percentile, seconds in (("50", t.time_to_touch.p50_s),
                                          ("90", t.time_to_touch.p90_s)):  # fmt: skip
                    if seconds is not None:
                        m.kpi_time_to_touch_seconds.labels(*labels, percentile).set(seconds)

    def output_emitted(self, kind: str, new_tier: str, direction: str, model: str) -> None:
        if kind == "handoff":
            self.metrics.handoffs_total.labels(tier=new_tier, model=model).inc()
        else:
            self.metrics.tier_changes_total.labels(
                direction=direction, tier=new_tier, model=model
            ).inc()

    def models(self, names: Iterable[str]) -> None:
        self._models = tuple(names)
        self._zero_outputs()

    def _zero_outputs(self) -> None:
        m = self.metrics
        for model in self._models:
            for tier in self._tiers:
                m.handoffs_total.labels(tier=tier, model=model)
                for direction in ("up", "down"):
                    m.tier_changes_total.labels(direction=direction, tier=tier, model=model)

    def retried(self, operation: str) -> None:
        self.metrics.retries_total.labels(operation=operation).inc()

    def redis_state(self, state: str) -> None:
        for failure in REDIS_FAILURES:
            self.metrics.redis_failing.labels(failure=failure).set(1 if failure == state else 0)

    def rules_loaded(
        self, version: str, tiers: Iterable[str], result: str, primary: bool = True
    ) -> None:
        m = self.metrics
        if result == "rejected":
            m.rules_reloads_total.labels(result="rejected").inc()
            return
        if result == "applied":
            m.rules_reloads_total.labels(result="applied").inc()
        if primary:
            m.rules_version_info.clear()
            m.rules_version_info.labels(version=version).set(1)
        # Tiers come from the rules: a closed set per version (and per model).
        self._tiers = tuple(dict.fromkeys((*self._tiers, *tiers)))
        for tier in self._tiers:
            m.sla_breaches_total.labels(tier=tier)
        self._zero_outputs()

    def outbox_pending(self, entries: int) -> None:
        self.metrics.outbox_pending.set(entries)

    def decay_due(self, leads: int) -> None:
        self.metrics.decay_due_leads.set(leads)

    def pipeline_stalled(self, seconds: float) -> None:
        self.metrics.pipeline_stalled_seconds.set(seconds)

    def handoff_visible(self, seconds: float) -> None:
        self.metrics.handoff_visible_seconds.observe(seconds)

    def track_names(self, names: Iterable[str]) -> None:
        for name in names:  # from the rules: a closed set per rules version
            self.metrics.track_events_total.labels(event=name, outcome="accepted")

    def track_events(self, counts: Mapping[tuple[str, str], int]) -> None:
        for (name, outcome), n in counts.items():
            self.metrics.track_events_total.labels(event=name, outcome=outcome).inc(n)

    def edges_applied(self, counts: Mapping[tuple[str, str], int]) -> None:
        m = self.metrics
        for (what, label), n in counts.items():
            if what == "identity":
                m.identity_merges_total.labels(result=label).inc(n)
            elif what == "forwarded":
                m.identity_forwarded_total.inc(n)
            elif what in ("account_member", "account_leave"):
                m.account_updates_total.labels(kind=what[8:], result=label).inc(n)
            elif what == "account_handoff":
                m.account_handoffs_total.labels(tier=label).inc(n)
            elif what == "forget":
                m.forget_requests_total.labels(result=label).inc(n)
            elif what == "forgotten_dropped":
                m.forgotten_dropped_total.inc(n)
