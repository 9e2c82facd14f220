"""Running the delivery service: as `streamscore deliver`, or inside `streamscore dev`."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
from typing import Final
from urllib.parse import urlsplit

from aiokafka.errors import KafkaConnectionError
from mode import Service

from streamscore.config import ENV_PREFIX, Settings
from streamscore.delivery.metrics import (
    DeliveryMetrics,
    PrometheusDeliverySensor,
    create_delivery_metrics,
)
from streamscore.delivery.service import DeliveryError, DeliveryService
from streamscore.delivery.web import start_web

log = logging.getLogger(__name__)

#: `streamscore dev` waits this long for the service to commit and leave at a stop.
AGENT_STOP_TIMEOUT_S: Final = 8.0


def _plain_http_off_host(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        return False
    if parts.hostname == "localhost":
        return False
    try:
        return not ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return True


async def run_delivery(
    settings: Settings, stopping: asyncio.Event, metrics: DeliveryMetrics | None = None
) -> None:
    """Serve /metrics, /healthz and /readyz and deliver handoffs until `stopping` is set."""
    metrics = metrics or create_delivery_metrics()
    service = DeliveryService(
        settings, PrometheusDeliverySensor(metrics, len(settings.delivery_webhook_urls))
    )
    for webhook in service.webhooks:
        if _plain_http_off_host(webhook.url):
            # Signed, so not forgeable, but readable on the way: a handoff is personal data.
            log.warning(
                "webhook %d (%s) is plain http:// off this host: handoffs travel unencrypted",
                webhook.ref.index, webhook.ref.redacted,
            )  # fmt: skip
    runner = await start_web(
        service, metrics.registry, settings.web_host, settings.delivery_web_port
    )
    port = runner.addresses[0][1] if runner.addresses else settings.delivery_web_port
    log.info(
        "delivering %s to %d webhook(s) as %s; metrics on http://%s:%d/metrics",
        settings.topic_handoffs, len(service.webhooks), settings.delivery_format,
        settings.web_host, port,
    )  # fmt: skip
    try:
        await service.run(stopping)
    finally:
        await runner.cleanup()


def serve(settings: Settings) -> None:
    """Run the delivery service in this process until SIGTERM or SIGINT (`streamscore deliver`)."""

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await run_delivery(settings, stopping)

    try:
        asyncio.run(main())
    except KafkaConnectionError:
        raise DeliveryError(
            f"cannot reach the Kafka broker at {settings.kafka_bootstrap}: "
            f"check {ENV_PREFIX}KAFKA_BOOTSTRAP"
        ) from None


class DeliveryAgent(Service):
    """The delivery service as a mode Service, for `streamscore dev`'s Faust worker."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._task = asyncio.create_task(
            run_delivery(self.settings, self._stopping), name="delivery"
        )
        self._task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # The scoring worker keeps running: delivery resumes from its committed offsets
            # at the next start.
            log.error("delivery stopped: %r", task.exception())

    async def on_stop(self) -> None:
        self._stopping.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), AGENT_STOP_TIMEOUT_S)
            except TimeoutError:
                self._task.cancel()
        if self._task is not None and self._task.done() and not self._task.cancelled():
            with contextlib.suppress(Exception):
                self._task.result()  # already logged by _on_done
