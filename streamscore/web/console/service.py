"""The console as a mode Service, so `streamscore dev` serves it in the worker's process."""

from __future__ import annotations

from aiohttp import web
from mode import Service

from streamscore.config import Settings
from streamscore.web.console.app import create_app


class ConsoleService(Service):
    """Serves the console on console_host:console_port while the service runs.

    `streamscore dev` runs it without a token unless console_token is set: the dev stack is
    one person's, on 127.0.0.1, with demo data.
    """

    def __init__(self, settings: Settings, require_token: bool = False) -> None:
        super().__init__()
        self.settings = settings
        self.require_token = require_token
        self._runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        app = create_app(self.settings, require_token=self.require_token)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()  # opens Redis, builds the static files, starts the handoff feed
        self._runner = runner
        site = web.TCPSite(runner, self.settings.console_host, self.settings.console_port)
        await site.start()

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
