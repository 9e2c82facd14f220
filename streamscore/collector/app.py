"""The collector's HTTP surface: Segment Tracking API routes, CORS, /metrics, /healthz, /readyz."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamscore.collector.auth import WriteKeys
from streamscore.collector.body import decode_body, parse_object
from streamscore.collector.errors import REASONS, Reason, Rejected
from streamscore.collector.producer import DurableProducer
from streamscore.collector.routing import MESSAGE_TYPES, Endpoint, records_of, topic_kinds_of
from streamscore.config import Settings
from streamscore.errors import ConfigError
from streamscore.metrics import COLLECTOR_STATUSES, CollectorMetrics, create_collector_metrics

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Segment's paths, with analytics.js's one-letter forms (it posts to /v1/t, /v1/p, ... and, when
# batching, /v1/b) and /v1/import, Segment's older name of /v1/batch.
ENDPOINTS: Mapping[str, Endpoint] = MappingProxyType(
    {
        "/v1/track": "track",
        "/v1/t": "track",
        "/v1/page": "page",
        "/v1/p": "page",
        "/v1/screen": "screen",
        "/v1/s": "screen",
        "/v1/identify": "identify",
        "/v1/i": "identify",
        "/v1/alias": "alias",
        "/v1/a": "alias",
        "/v1/group": "group",
        "/v1/g": "group",
        "/v1/batch": "batch",
        "/v1/import": "batch",
        "/v1/b": "batch",
    }
)
_OTHER_PATHS = {"/metrics": "metrics", "/healthz": "healthz", "/readyz": "readyz"}
_ALLOWED_HEADERS = "Authorization, Content-Type, Content-Encoding, AnonymousId, X-Retry-Count"
_EXPOSED_HEADERS = "Retry-After, X-RateLimit-Reset"
_HTTP_REASONS: dict[int, Reason] = {404: "not_found", 405: "method_not_allowed"}
_OK = orjson.dumps({"success": True})
# aiohttp would inflate gzip bodies itself, without a bound; decode_body does it bounded.
RUNNER_OPTIONS: Mapping[str, Any] = MappingProxyType({"access_log": None, "auto_decompress": False})


class Collector:
    """The request handlers and what they share: settings, keys, producer, metrics."""

    def __init__(self, settings: Settings, metrics: CollectorMetrics) -> None:
        keys = settings.collector_keys
        if not keys:
            raise ConfigError(
                "collector_write_keys is empty: set STREAMSCORE_COLLECTOR_WRITE_KEYS to one or "
                "more comma-separated write keys"
            )
        self.settings = settings
        self.metrics = metrics
        self.keys = WriteKeys(keys)
        self.origins = settings.collector_origins
        self.producer = DurableProducer(settings, metrics)
        # Zero samples for the closed label sets, so a rate() over them exists before the first.
        for reason in REASONS:
            metrics.rejected_total.labels(reason=reason)
        for message_type in MESSAGE_TYPES:
            for kind in topic_kinds_of(message_type):
                metrics.events_total.labels(type=message_type, topic_kind=kind)
        # The wire limit leaves room for gzip's framing around an incompressible body.
        self._wire_limit = settings.collector_max_request_bytes + 1024

    async def ingest(self, request: web.Request, endpoint: Endpoint) -> web.Response:
        """One Tracking API call: authenticate, decode, validate, produce, answer."""
        received_ms = time.time_ns() // 1_000_000
        raw = await self._read(request)
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            self.keys.check(authorization, None)  # before spending time on the body
        settings = self.settings
        limit = (
            settings.collector_max_request_bytes
            if endpoint == "batch"
            else settings.collector_max_message_bytes
        )
        encoding = request.headers.get("Content-Encoding")
        doc = parse_object(decode_body(raw, encoding, limit))
        plain = (encoding or "identity").strip().lower() == "identity"  # else gzip: decoded
        self.metrics.received_bytes_total.labels(encoding="identity" if plain else "gzip").inc(
            len(raw)
        )
        if authorization is None:
            self.keys.check(None, doc.get("writeKey"))
        records = records_of(doc, endpoint, received_ms, settings.collector_max_message_bytes)
        await self.producer.send_all(records)
        return web.Response(body=_OK, content_type="application/json")

    async def _read(self, request: web.Request) -> bytes:
        limit = self._wire_limit
        if request.content_length is not None and request.content_length > limit:
            raise Rejected(
                "request_too_large", f"Content-Length {request.content_length}, limit {limit}"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise Rejected("request_too_large", f"body is over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def error(self, rejected: Rejected) -> web.Response:
        """The JSON error body the SDKs read (`code` and `message`), with Retry-After if due."""
        self.metrics.rejected_total.labels(reason=rejected.reason).inc()
        body = {"success": False, "code": rejected.reason, "message": rejected.detail}
        headers = {}
        retry_after = self.settings.collector_retry_after_s
        if rejected.status in (429, 503) and retry_after:
            headers["Retry-After"] = str(retry_after)
            if rejected.status == 429:
                headers["X-RateLimit-Reset"] = str(retry_after)  # analytics.js reads this one
        return web.Response(
            body=orjson.dumps(body),
            status=rejected.status,
            content_type="application/json",
            headers=headers,
        )

    def origin_allowed(self, origin: str) -> bool:
        """Whether a browser page of `origin` may call the collector."""
        return self.origins is None or origin.rstrip("/") in self.origins

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answers preflights, refuses foreign origins, maps errors to JSON, counts, adds CORS."""
        started = time.perf_counter()
        endpoint = ENDPOINTS.get(request.path) or _OTHER_PATHS.get(request.path, "other")
        origin = request.headers.get("Origin")
        try:
            if origin is not None and not self.origin_allowed(origin):
                raise Rejected("origin_not_allowed", f"origin {origin!r} is not allowed")
            if request.method == "OPTIONS" and request.path in ENDPOINTS:
                response: web.StreamResponse = _preflight(request)
            else:
                response = await handler(request)
        except Rejected as rejected:
            response = self.error(rejected)
        except web.HTTPException as exc:
            reason = _HTTP_REASONS.get(exc.status)
            if reason is None:
                raise
            response = self.error(
                Rejected(reason, f"{request.method} {request.path}: {exc.reason}")
            )
        if origin is not None and self.origin_allowed(origin):
            _cors(response, origin)
        status = str(response.status)
        self.metrics.requests_total.labels(
            endpoint=endpoint, status=status if status in COLLECTOR_STATUSES else "other"
        ).inc()
        self.metrics.request_seconds.labels(endpoint=endpoint).observe(
            time.perf_counter() - started
        )
        return response

    async def metrics_view(self, _: web.Request) -> web.Response:
        """Prometheus text exposition of the collector's registry."""
        return web.Response(
            body=generate_latest(self.metrics.registry),
            content_type=CONTENT_TYPE_LATEST.split(";")[0],
        )

    async def healthz(self, _: web.Request) -> web.Response:
        """The process answers."""
        return web.json_response({"alive": True})

    async def readyz(self, _: web.Request) -> web.Response:
        """200 when the producer is connected, else 503."""
        ready = self.producer.ready
        return web.json_response({"ready": ready}, status=200 if ready else 503)


_APP_KEY = web.AppKey("collector", Collector)


def _preflight(request: web.Request) -> web.Response:
    requested = request.headers.get("Access-Control-Request-Headers")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": requested or _ALLOWED_HEADERS,
            "Access-Control-Max-Age": "86400",
        },
    )


def _cors(response: web.StreamResponse, origin: str) -> None:
    # The origin is echoed rather than "*", so credentialed requests (XHR withCredentials) work.
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Credentials"] = "true"
    response.headers["Access-Control-Expose-Headers"] = _EXPOSED_HEADERS
    response.headers.add("Vary", "Origin")


def create_app(settings: Settings, metrics: CollectorMetrics | None = None) -> web.Application:
    """The collector's aiohttp application; its producer starts and stops with the app."""
    collector = Collector(settings, metrics or create_collector_metrics())
    app = web.Application(middlewares=[collector.middleware])
    app[_APP_KEY] = collector
    for path, endpoint in ENDPOINTS.items():
        app.router.add_post(path, _bind(collector, endpoint))
    app.router.add_get("/metrics", collector.metrics_view)
    app.router.add_get("/healthz", collector.healthz)
    app.router.add_get("/readyz", collector.readyz)

    async def start(_: web.Application) -> None:
        await collector.producer.start()

    async def stop(_: web.Application) -> None:
        await collector.producer.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def collector_of(app: web.Application) -> Collector:
    """The Collector behind an app made by create_app."""
    return app[_APP_KEY]


def _bind(collector: Collector, endpoint: Endpoint) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return await collector.ingest(request, endpoint)

    return handle


def make_runner(settings: Settings, metrics: CollectorMetrics | None = None) -> web.AppRunner:
    """An AppRunner for the collector app, as `streamscore collector` serves it."""
    return web.AppRunner(create_app(settings, metrics), **RUNNER_OPTIONS)


def run_collector(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then finish the requests in flight and flush."""
    app = create_app(settings)
    log.info(
        "collector listening on http://%s:%d (%d write keys, origins: %s)",
        settings.collector_host,
        settings.collector_port,
        len(settings.collector_keys),
        settings.collector_allowed_origins,
    )
    web.run_app(
        app,
        host=settings.collector_host,
        port=settings.collector_port,
        print=None,
        shutdown_timeout=settings.collector_ack_timeout_s,
        **RUNNER_OPTIONS,
    )
