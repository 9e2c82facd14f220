"""HTTP views: /healthz, /readyz, /metrics, /kpis and /leads/{lead_id}."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamscore.outcomes.kpi import compute_kpis
from streamscore.runtime.clock import now_ms
from streamscore.scoring.explain import describe_lead
from streamscore.store.errors import classify

if TYPE_CHECKING:
    from streamscore.app import Runtime

log = logging.getLogger(__name__)
T = TypeVar("T")


def authorized(runtime: Runtime, request: Request) -> bool:
    """True when no web token is set, or the request carries it as a bearer token."""
    token = runtime.settings.web_token
    if token is None:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)


class _RedisUnavailable(Exception):
    """A view could not read Redis (already logged): answer 503."""


async def _read(runtime: Runtime, what: str, op: Callable[[], Awaitable[T]]) -> T:
    """Run one Redis read of a view within redis_timeout_s; any Redis failure is one log line."""
    try:
        async with asyncio.timeout(runtime.settings.redis_timeout_s):
            return await op()
    except Exception as exc:
        # The one broad handler of the views: any failure to read Redis is a 503 with a
        # one-line log, never a traceback page; anything else is a bug and re-raised.
        if not isinstance(exc, TimeoutError) and classify(exc) is None:
            raise
        log.warning("GET %s: Redis failed: %r", what, exc)
        raise _RedisUnavailable from exc


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

    @app.page("/kpis")
    async def kpis(view: View, request: Request) -> Response:
        if not authorized(runtime, request):
            return view.json({"error": "unauthorized"}, status=401)
        worker = runtime.worker
        if worker is None:
            return view.json({"error": "not started"}, status=503)
        try:
            counters = await _read(runtime, "/kpis", worker.store.kpi_counters)
        except _RedisUnavailable:
            return view.json({"error": "redis unavailable"}, status=503)
        tiers = [t.name for t in runtime.rules.rules.tiers]
        return view.json(compute_kpis(counters, tiers).to_json())

    # A lead id may hold any printable character, "/", "{" and "}" included: the route takes the
    # rest of the path (percent-decoded by the server), not aiohttp's default [^{}/]+.
    @app.page("/leads/{lead_id:.+}")
    async def lead(view: View, request: Request, lead_id: str) -> Response:
        if not authorized(runtime, request):
            return view.json({"error": "unauthorized"}, status=401)
        worker = runtime.worker
        if worker is None:
            return view.json({"error": "not started"}, status=503)
        try:
            state = await _read(runtime, "/leads", partial(worker.store.lead_state, lead_id))
        except _RedisUnavailable as exc:
            failure = {"error": "redis unavailable", "detail": type(exc.__cause__).__name__}
            return view.json(failure, status=503)
        if state is None:
            return view.json({"error": "unknown lead", "lead_id": lead_id}, status=404)
        body: dict[str, Any] = describe_lead(state, runtime.rules.rules, now_ms())
        return view.json(body)
