"""The Faust application: lifecycle, the scoring agent service, timers and web views. Thin."""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.app.base import BootStrategy
from mode import Service

from streamscore.config import Settings
from streamscore.errors import StreamscoreError
from streamscore.events.schemas import compile_input_schemas
from streamscore.metrics import Metrics, create_metrics
from streamscore.runtime.kafka import ensure_topics, make_producer
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.sensors import PrometheusSensor, Sensor
from streamscore.runtime.worker import ScoringWorker
from streamscore.store.client import open_settings_client
from streamscore.store.keys import KeySpace
from streamscore.store.store import RedisStore

log = logging.getLogger(__name__)

#: How long a graceful stop may wait for the batch in flight (SIGTERM must exit within 10 s,
#: and the Kafka commit and the producer's flush come after it).
STOP_TIMEOUT_S = 5.0
#: How often the watchdog looks at the pipeline.
WATCHDOG_EVERY_S = 5.0


async def open_store(settings: Settings) -> RedisStore:
    """The worker's store, on one Redis server or a Redis Cluster as the settings say.

    Its client has no socket timeout: redis-py enforces one by sending through
    asyncio.wait_for, which on Python 3.11 runs the send in a new task queued behind the CPU
    work already scheduled (5 to 64 ms a 0.6 MB call, with Redis idle). The worker bounds every
    call by redis_timeout_s itself (runtime.guard).
    """
    client = await open_settings_client(settings)
    return RedisStore(
        client,
        KeySpace(
            settings.redis_key_prefix, settings.redis_key_groups, settings.redis_forgotten_prefix
        ),
    )


@dataclass
class Runtime:
    """Everything the app's services, timers and views share."""

    settings: Settings
    metrics: Metrics
    sensor: Sensor
    rules: RulesHolder
    worker: ScoringWorker | None = None


class ScoringAgent(Service):
    """Runs the batch scoring worker under Faust's lifecycle.

    Faust's per-event stream machinery costs ~150 µs an event on this hardware, so the hot
    path consumes with aiokafka getmany in batches; Faust still owns start, stop, signals,
    timers and the web server.
    """

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._crash_task: asyncio.Future[None] | None = None

    async def on_start(self) -> None:
        settings = self.runtime.settings
        compile_input_schemas()  # a missing or broken schemas directory fails the start
        created = await ensure_topics(settings)
        if created:
            log.info("created topics: %s", ", ".join(created))
        store = await open_store(settings)
        producer = make_producer(settings)
        await producer.start()
        worker = ScoringWorker(settings, self.runtime.sensor, self.runtime.rules, store, producer)
        self.runtime.worker = worker
        # Outputs recorded before a crash go out first, with their original ids.
        await worker.redrive_outbox()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, worker.reload_all_rules)
        self._task = asyncio.create_task(worker.run(self._stopping), name="scoring-worker")
        self._task.add_done_callback(self._on_worker_done)

    def _on_worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not self._stopping.is_set():
            log.critical("scoring worker failed: %r; stopping", task.exception())
            self.runtime.sensor.readiness(False)
            # The process exits non-zero so an orchestrator restarts it from committed offsets.
            exc = task.exception()
            assert exc is not None
            self._crash_task = asyncio.ensure_future(self.crash(exc))

    async def stop_scoring(self) -> None:
        """Stop fetching, apply and commit what is in flight. Idempotent."""
        self._stopping.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("batch in flight abandoned at shutdown; it will be redelivered")
                self._task.cancel()
            except Exception:
                log.debug("worker task ended with an error (already reported)")

    async def on_stop(self) -> None:
        await self.stop_scoring()
        worker = self.runtime.worker
        if worker is not None:
            await worker.producer.stop()
            await worker.store.close()


class _Boot(BootStrategy):
    # The scoring loop consumes with aiokafka itself and the app has no agents: Faust's own
    # consumer would join a group for no topic (aiokafka refuses that) and poll for nothing.
    enable_kafka_consumer = False


class StreamscoreApp(faust.App):
    """Faust without its consumer: lifecycle, timers and the web server."""

    BootStrategy = _Boot


class ScoringProcess(faust.Worker):
    """The Faust worker, stopping the scoring agent first.

    Faust stops its children in reverse start order, the app (consumer, web server, timers)
    before the agent: about 2 s during which the agent would keep fetching and scoring after
    SIGTERM. A stop should stop the intake at once.
    """

    def __init__(self, app: faust.App, agent: ScoringAgent, *services: Any, **kwargs: Any) -> None:
        super().__init__(app, agent, *services, **kwargs)
        self.agent = agent

    async def on_stop(self) -> None:
        await self.agent.stop_scoring()


def create_app(
    settings: Settings, metrics: Metrics | None = None
) -> tuple[faust.App, ScoringAgent]:
    """Build the Faust app (timers, views) and the scoring agent service a Worker runs with it."""
    from streamscore import views

    metrics = metrics or create_metrics()
    sensor = PrometheusSensor(metrics, settings.input_topics)
    runtime = Runtime(
        settings,
        metrics,
        sensor,
        RulesHolder(settings.rules_file, sensor, settings.dedup_window_s),
    )
    app = StreamscoreApp(
        f"{settings.consumer_group}-app",
        broker=[f"kafka://{server.strip()}" for server in settings.kafka_bootstrap.split(",")],
        broker_credentials=_faust_credentials(settings),
        web_enabled=True,
        # Faust's own pages (/router/, /table/, /graph/, /stats/) describe the app and its
        # tables to anyone who asks, and /router/<x>/ answers 500: streamscore serves its own.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        store="memory://",
        # Faust insists on a data directory even with in-memory tables; keep it out of the cwd.
        datadir=str(Path(tempfile.gettempdir()) / f"streamscore-faust-{settings.consumer_group}"),
        topic_disable_leader=True,
        # Short group timeouts, or the first join takes ~30 s (Tansu holds joins that long).
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_session_timeout_ms / 6000,
        broker_rebalance_timeout=settings.kafka_session_timeout_ms / 1000,
        # The app has no agents of its own (the scoring loop consumes with aiokafka directly).
        consumer_auto_offset_reset="latest",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
    )

    @app.timer(interval=settings.outbox_redrive_s)
    async def outbox_redrive() -> None:
        worker = runtime.worker
        if worker is None or worker.consumer is None:
            return
        try:
            await worker.redrive_outbox()
        except (StreamscoreError, KafkaError) as exc:
            # The scoring loop owns the verdict on Redis and the broker (it exits when they stay
            # away); a timer that raised would take the app down with a traceback instead.
            log.warning("outbox re-drive failed, will try again: %r", exc)

    @app.timer(interval=settings.kpi_refresh_s)
    async def kpis() -> None:
        worker = runtime.worker
        if worker is None or worker.consumer is None:
            return
        try:
            await worker.refresh_kpis()
        except StreamscoreError as exc:
            log.warning("KPI refresh failed, will try again: %r", exc)

    @app.timer(interval=WATCHDOG_EVERY_S)
    async def watchdog() -> None:
        # Never awaits: a timer waiting on Redis (an OOM retried until memory frees) would
        # silence the watchdog exactly when it must speak.
        worker = runtime.worker
        if worker is not None:
            worker.watchdog()

    @app.timer(interval=WATCHDOG_EVERY_S)
    async def upkeep() -> None:
        worker = runtime.worker
        if worker is None or worker.consumer is None:
            return
        try:
            await worker.maintain()
        except StreamscoreError as exc:
            log.warning("tier index upkeep failed, will try again: %r", exc)

    if settings.rules_poll_s > 0:

        @app.timer(interval=settings.rules_poll_s)
        async def rules_watch() -> None:
            if runtime.worker is not None:
                runtime.worker.reload_rules()  # the live rules, A/B arms and shadows
            else:
                runtime.rules.reload_if_changed()

    views.register(app, runtime)
    return app, ScoringAgent(runtime)


def _faust_credentials(settings: Settings) -> faust.auth.Credentials | None:
    from streamscore.runtime.kafka import security_kwargs

    kwargs = security_kwargs(settings)
    protocol = settings.kafka_security_protocol
    if protocol == "SSL":
        return faust.SSLCredentials(kwargs["ssl_context"])
    if protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password else None,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=kwargs.get("ssl_context"),
        )
    return None
