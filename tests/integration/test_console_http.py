"""The console's application in-process (aiohttp's test server) on the session's broker and
Redis: no token outside dev is refused, Redis failures are a 503 page, static files are cached
and gzipped, the live stream ends when the console stops."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streamscore import dev
from streamscore.config import Settings
from streamscore.errors import ConfigError
from streamscore.web.console.app import console_of, create_app


async def client_of(app: web.Application) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


def test_outside_dev_the_console_needs_a_token(settings_factory: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="console_token is not set"):
        create_app(settings_factory())
    with pytest.raises(ConfigError, match="at least 16 characters"):
        settings_factory(console_token="short")


async def test_redis_failures_are_a_503_page(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    # A port nothing listens on; cluster "false" so that starting asks Redis nothing.
    closed = f"redis://127.0.0.1:{dev.free_port()}/0"
    settings = settings_factory(redis_url=closed, redis_cluster="false", redis_timeout_s=1)
    client = await client_of(create_app(settings, require_token=False))
    try:
        caplog.set_level(logging.WARNING, "streamscore.web.console.app")
        for path in ("/", "/lead?id=ann", "/kpis"):
            response = await client.get(path)
            assert response.status == 503, path
            assert "Redis unavailable" in await response.text()
        # Pages that read no Redis still work.
        assert (await client.get("/rules")).status == 200
        lines = [r.getMessage() for r in caplog.records if "Redis failed" in r.getMessage()]
        assert len(lines) == 3 and all("\n" not in line for line in lines)
    finally:
        await client.close()


async def test_static_files_are_immutable_and_gzipped(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory(), require_token=False)
    client = await client_of(app)
    try:
        page = await (await client.get("/")).text()
        assert "open (dev)" in page
        console = console_of(app)
        asset = console.assets.plotly_js
        response = await client.get(asset.url, headers={"Accept-Encoding": "gzip"})
        assert response.status == 200
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert response.headers["Content-Type"].startswith("application/javascript")
        body = await response.read()  # aiohttp inflates it
        assert body == asset.body and gzip.decompress(asset.gzipped) == asset.body
        assert len(asset.gzipped) < len(asset.body) / 3
        plain = await client.get(asset.url, headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers
        assert (await client.get("/static/plotly-0.0.0.js")).status == 404
    finally:
        await client.close()


async def test_the_live_stream_ends_when_the_console_stops(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory(), require_token=False)
    client = await client_of(app)
    try:
        response = await client.get("/events")
        assert response.headers["Content-Type"] == "text/event-stream"
        assert await response.content.readline() == b"retry: 5000\n"
        await console_of(app).feed.stop()
        async with asyncio.timeout(5):
            rest = await response.content.read()
        assert rest == b"\n"
    finally:
        await client.close()
