"""The collector as a mode Service, so `streamscore dev` runs it in the worker's process."""

from __future__ import annotations

from aiohttp import web
from mode import Service

from streamscore.collector.app import make_runner
from streamscore.config import Settings


class CollectorService(Service):
    """Serves the collector app on collector_host:collector_port while the service runs."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self._runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        runner = make_runner(self.settings)
        await runner.setup()  # starts the producer
        self._runner = runner
        site = web.TCPSite(runner, self.settings.collector_host, self.settings.collector_port)
        await site.start()

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # stops the producer after the requests in flight
            self._runner = None
