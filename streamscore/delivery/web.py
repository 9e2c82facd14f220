"""The delivery service's HTTP endpoints: /healthz, /readyz and /metrics (aiohttp)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streamscore.delivery.service import DeliveryService


def create_web_app(service: DeliveryService, registry: CollectorRegistry) -> web.Application:
    """The aiohttp application serving the service's health and metrics."""

    async def healthz(request: web.Request) -> web.Response:
        # Alive while the consume loop runs: a stuck or failed loop should be restarted.
        alive = service.consumer is not None
        return web.json_response({"alive": alive}, status=200 if alive else 503)

    async def readyz(request: web.Request) -> web.Response:
        ready = service.ready
        body = {"ready": ready, **service.describe()}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry),
            content_type=CONTENT_TYPE_LATEST.split(";")[0],
            charset="utf-8",
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_web(
    service: DeliveryService, registry: CollectorRegistry, host: str, port: int
) -> web.AppRunner:
    """Serve the endpoints on host:port; returns the runner to clean up at stop."""
    runner = web.AppRunner(create_web_app(service, registry), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
