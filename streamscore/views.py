"""HTTP views: /healthz, /readyz, /metrics, /kpis and /leads/{lead_id} (GET, and DELETE: forget)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import faust
from aiokafka.errors import KafkaError
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamscore.errors import StreamscoreError
from streamscore.events.timefmt import format_time_ms
from streamscore.outcomes.kpi import compute_kpis
from streamscore.runtime.clock import now_ms
from streamscore.runtime.forget import ForgetConflict, forget_lead, send_tombstone
from streamscore.scoring.explain import describe_lead
from streamscore.store.errors import classify

if TYPE_CHECKING:
    from streamscore.app import Runtime
    from streamscore.runtime.worker import ScoringWorker

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
        log.warning("%s: Redis failed: %r", what, exc)
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
            counters = await _read(runtime, "GET /kpis", worker.kpi_counters)
        except _RedisUnavailable:
            return view.json({"error": "redis unavailable"}, status=503)
        tiers = [t.name for t in runtime.rules.rules.tiers]
        return view.json(compute_kpis(counters, tiers).to_json())

    # A lead id may hold any printable character, "/", "{" and "}" included: the route takes the
    # rest of the path (percent-decoded by the server), not aiohttp's default [^{}/]+.
    @app.page("/leads/{lead_id:.+}")
    class LeadView(View):
        """GET: one lead's explanation. DELETE: forget it (the web token is required)."""

        async def get(self, request: Request, lead_id: str) -> Response:
            if not authorized(runtime, request):
                return self.json({"error": "unauthorized"}, status=401)
            worker = runtime.worker
            if worker is None:
                return self.json({"error": "not started"}, status=503)
            try:
                read = partial(worker.store.lead_state, lead_id)
                state = await _read(runtime, "GET /leads", read)
            except _RedisUnavailable as exc:
                failure = {"error": "redis unavailable", "detail": type(exc.__cause__).__name__}
                return self.json(failure, status=503)
            if state is None:
                return self.json({"error": "unknown lead", "lead_id": lead_id}, status=404)
            body: dict[str, Any] = describe_lead(state, runtime.rules.rules, now_ms())
            return self.json(body)

        async def delete(self, request: Request, lead_id: str) -> Response:
            # A write: unlike the reads, it is refused while no web token is configured.
            if runtime.settings.web_token is None:
                body = {"error": "forgetting needs STREAMSCORE_WEB_TOKEN set on the worker"}
                return self.json(body, status=403)
            if not authorized(runtime, request):
                return self.json({"error": "unauthorized"}, status=401)
            worker = runtime.worker
            if worker is None:
                return self.json({"error": "not started"}, status=503)
            reason = request.query.get("reason") or None
            return await _forget(self, runtime, worker, lead_id, reason)


async def _forget(
    view: View, runtime: Runtime, worker: ScoringWorker, lead_id: str, reason: str | None
) -> Response:
    """DELETE /leads/{id}: forget the lead in Redis, then send its tombstone."""
    settings = runtime.settings
    try:
        forgotten = await _read(
            runtime,
            "DELETE /leads",
            partial(
                forget_lead,
                worker.store,
                lead_id,
                topic=settings.topic_forgotten,
                tier_names=[t.name for t in runtime.rules.rules.tiers],
                forget_ms=now_ms(),
                reason=reason,
            ),
        )
    except _RedisUnavailable as exc:
        failure = {"error": "redis unavailable", "detail": type(exc.__cause__).__name__}
        return view.json(failure, status=503)
    except ForgetConflict as exc:
        return view.json({"error": str(exc), "lead_id": lead_id}, status=409)
    runtime.sensor.edges_applied({("forget", forgotten.result): 1})
    log.info("forgot a lead (%s), %d pending outputs withdrawn", forgotten.result,
             forgotten.withdrawn)  # fmt: skip
    sent = True
    try:
        async with asyncio.timeout(settings.redis_timeout_s + 10):
            await send_tombstone(worker.store, worker.producer, forgotten)
    except (TimeoutError, KafkaError, StreamscoreError) as exc:
        # Forgotten all the same: the tombstone waits in the outbox for the re-drive timer.
        log.warning("tombstone not sent yet, left in the outbox for re-drive: %r", exc)
        sent = False
    return view.json(
        {
            "lead_id": lead_id,
            "result": forgotten.result,
            "forgotten_at": format_time_ms(forgotten.forget_ms),
            "outputs_withdrawn": forgotten.withdrawn,
            "tombstone": {"topic": forgotten.tombstone.topic, "sent": sent},
        }
    )
