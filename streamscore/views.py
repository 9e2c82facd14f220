"""HTTP views: /healthz, /readyz, /metrics and /leads/{lead_id}."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamscore.runtime.clock import now_ms
from streamscore.scoring.explain import describe_lead

if TYPE_CHECKING:
    from streamscore.app import Runtime


def register(app: faust.App, runtime: Runtime) -> None:
    """Attach the views to the Faust web server."""

    @app.page("/healthz")
    async def healthz(view: View, request: Request) -> Response:
        worker = runtime.worker
        alive = worker is not None and worker.consumer is not None
        return view.json({"alive": alive}, status=200 if alive else 503)

    @app.page("/readyz")
    async def readyz(view: View, request: Request) -> Response:
        worker = runtime.worker
        ready = worker is not None and worker.ready
        body = {
            "ready": ready,
            **(worker.describe() if worker else {}),
            "rules_version": runtime.rules.rules.version,
        }
        return view.json(body, status=200 if ready else 503)

    @app.page("/metrics")
    async def metrics(view: View, request: Request) -> Response:
        payload = generate_latest(runtime.metrics.registry)
        return view.bytes(payload, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/leads/{lead_id}")
    async def lead(view: View, request: Request, lead_id: str) -> Response:
        worker = runtime.worker
        if worker is None:
            return view.json({"error": "not started"}, status=503)
        try:
            async with asyncio.timeout(runtime.settings.redis_timeout_s):
                state = await worker.store.lead_state(lead_id)
        except TimeoutError:
            return view.json({"error": "redis timed out"}, status=503)
        if state is None:
            return view.json({"error": "unknown lead", "lead_id": lead_id}, status=404)
        body: dict[str, Any] = describe_lead(state, runtime.rules.rules, now_ms())
        return view.json(body)
