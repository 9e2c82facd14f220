"""Shared fixtures: the broker and Valkey for the session, per-test names and settings."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from streamscore import dev
from streamscore.config import ENV_PREFIX, Settings, load_settings

KAFKA_BOOTSTRAP_ENV = "STREAMSCORE_TEST_KAFKA_BOOTSTRAP"
REDIS_URL_ENV = "STREAMSCORE_TEST_REDIS_URL"

REPO_ROOT = Path(__file__).resolve().parents[1]
INTEGRATION_DIR = REPO_ROOT / "tests" / "integration"
RULES_FILE = REPO_ROOT / "examples" / "rules.yaml"


def run_cli(
    *args: str, cwd: Path = REPO_ROOT, env: Mapping[str, str] | None = None, **more: str
) -> subprocess.CompletedProcess[str]:
    """`streamscore ARGS` in a child process, with only the STREAMSCORE_* variables given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "streamscore.cli", *args],
        cwd=cwd,
        env={**clean, **(env or {}), **more},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration with `integration`."""
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


class RedisServer:
    """The session's Redis-compatible server: embedded (restartable) or external (fixed)."""

    def __init__(self, url: str | None = None) -> None:
        self._external_url = url
        self.server: dev.EmbeddedServer | None = None

    @property
    def embedded(self) -> bool:
        """True when this session started the server and so can stop and restart it."""
        return self._external_url is None

    @property
    def url(self) -> str:
        """redis:// URL; unchanged across restarts."""
        if self._external_url is not None:
            return self._external_url
        return self._embedded().url

    @property
    def port(self) -> int:
        """Port of the embedded server; stays the same across restarts."""
        return self._embedded().port

    def alive(self) -> bool:
        """Whether the embedded server is running (an external one is assumed to be)."""
        if not self.embedded:
            return True
        return self.server is not None and self.server.alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the embedded server, keeping its port for start(); idempotent."""
        self._embedded().stop(timeout_s)

    def start(self) -> None:
        """Start the server; after stop(), a fresh, empty one on the same port; else a no-op."""
        self._require_embedded()
        if self.server is None:
            self.server = dev.start_valkey()
        elif not self.server.alive():
            self.server = dev.start_valkey(port=self.server.port, password=self.server.password)

    def restart(self) -> None:
        """Stop, then start a fresh, empty server on the same port."""
        self.stop()
        self.start()

    def _require_embedded(self) -> None:
        if self._external_url is not None:
            pytest.fail(
                f"this test stops and restarts Redis, which needs the embedded Valkey; "
                f"unset {REDIS_URL_ENV} to run it",
                pytrace=False,
            )

    def _embedded(self) -> dev.EmbeddedServer:
        self._require_embedded()
        if self.server is None:
            raise RuntimeError("the embedded Valkey was never started")
        return self.server

    def close(self) -> None:
        """Stop the embedded server at session end."""
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_servers() -> Iterator[None]:
    """Fail the session if a server started through streamscore.dev outlives its fixture or test."""
    yield
    leaked = dev.running_servers()
    if leaked:
        listed = ", ".join(f"{s.name} pid {s.pid} on {s.address}" for s in leaked)
        dev.stop_all()
        pytest.fail(f"embedded servers still running at session end: {listed}", pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of ${KAFKA_BOOTSTRAP_ENV}, else of an embedded broker for the session."""
    external = os.environ.get(KAFKA_BOOTSTRAP_ENV)
    if external:
        yield external
        return
    broker = dev.start_broker()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The server of ${REDIS_URL_ENV}, else an embedded Valkey that tests may stop and restart."""
    handle = RedisServer(os.environ.get(REDIS_URL_ENV) or None)
    if handle.embedded:
        handle.start()
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """redis:// URL of the session's server."""
    return redis_server.url


@pytest.fixture(autouse=True)
def _redis_back_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that stopped the embedded Valkey, start it again for the next test."""
    yield
    if "redis_server" in request.fixturenames:
        handle: RedisServer = request.getfixturevalue("redis_server")
        if handle.embedded and not handle.alive():
            handle.start()


@pytest.fixture
def unique() -> str:
    """A short random hex id for this test's topics, consumer group and key prefix."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings_factory(kafka_bootstrap: str, redis_url: str, unique: str) -> Callable[..., Settings]:
    """Build Settings isolated to this test; keyword overrides win over the defaults here."""
    topics = {
        name: f"{info.default}-{unique}"
        for name, info in Settings.model_fields.items()
        if name.startswith("topic_") and info.annotation is str
    }

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap,
            "redis_url": redis_url,
            **topics,
            "consumer_group": f"ss-test-{unique}",
            "redis_key_prefix": f"sstest:{unique}",
            "web_port": dev.free_port(),
            "rules_file": RULES_FILE,
        }
        values.update(overrides)
        return load_settings(**values)

    return make
