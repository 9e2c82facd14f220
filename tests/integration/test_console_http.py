"""The console's application in-process (aiohttp's test server) on the session's broker and
Redis: no token outside dev is refused, Redis failures are a 503 page, static files are cached
and gzipped, the live stream ends when the console stops, the rules page shows the promotion
history and an invalid rules file."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streamscore import dev
from streamscore.config import Settings
from streamscore.errors import ConfigError
from streamscore.lab.promote import promote
from streamscore.web.console.app import console_of, create_app
from tests.conftest import RULES_FILE


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


async def test_the_rules_page_shows_the_promotion_history_and_an_invalid_file(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    live = tmp_path / "rules.yaml"
    text = RULES_FILE.read_text(encoding="utf-8")
    live.write_text(text, encoding="utf-8")
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(text.replace("b2b-2026.11.1", "b2b-2026.12.0"), encoding="utf-8")
    promote(candidate, live, datetime(2026, 12, 1, 9, 30, tzinfo=UTC))
    client = await client_of(create_app(settings_factory(rules_file=live), require_token=False))
    try:
        page = await (await client.get("/rules")).text()
        assert '<strong id="live-version">b2b-2026.12.0</strong>' in page
        history = page.split('id="history"', 1)[1].split("</section>", 1)[0]
        cells = [c.split("</td>")[0] for c in history.split("<td")[1:]]
        assert [c.split(">", 1)[1] for c in cells] == [
            "2026-12-01T09:30:00+00:00", "promote", "b2b-2026.11.1", "b2b-2026.12.0",
            "rules.b2b-2026.11.1.yaml",
        ]  # fmt: skip
        assert "Versions kept for rollback: b2b-2026.11.1." in history
        # A broken edit: every page says so, and the rules in force stay the last valid ones.
        live.write_text(text.replace("version:", "versio:"), encoding="utf-8")
        page = await (await client.get("/models")).text()
        assert 'id="rules-problems"' in page and "rules b2b-2026.12.0" in page
        assert f"{live}: line " in page
    finally:
        await client.close()
