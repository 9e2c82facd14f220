"""RedisGuard: every Redis call of the runtime goes through it: time-bounded, retried by class.

It also owns what the rest of the process sees of Redis's health: readiness is lost at the
first failure of any kind and regained on the next success, and a back-pressure wait (Redis
out of memory) is visible as its own state rather than as silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from streamscore.config import Settings
from streamscore.runtime.retry import with_retry
from streamscore.runtime.sensors import Sensor
from streamscore.store.errors import Failure, classify

T = TypeVar("T")


class RedisGuard:
    """Runs Redis operations with `redis_timeout_s` per attempt and the retry policy by class."""

    def __init__(
        self, settings: Settings, sensor: Sensor, on_health: Callable[[], None] | None = None
    ) -> None:
        self._timeout_s = settings.redis_timeout_s
        self._budget_s = settings.redis_retry_max_s
        self._sensor = sensor
        self._on_health = on_health
        #: The failure class Redis is in now, None while healthy.
        self.failing: Failure | None = None
        #: The last failure seen, for the watchdog's report.
        self.last_error = ""

    @property
    def ok(self) -> bool:
        """Redis answered the last call."""
        return self.failing is None

    async def __call__(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run `op` until it succeeds; raise on a fatal error or an exhausted budget."""

        async def bounded() -> T:
            # redis-py drops a connection whose call is cancelled mid-way, so a late reply is
            # never read by the next call: every call here is idempotent and can be resent.
            async with asyncio.timeout(self._timeout_s):
                return await op()

        return await with_retry(
            bounded,
            operation="redis",
            classify=self._classify,
            budget_s=self._budget_s,
            on_retry=self._sensor.retried,
            on_state=self._set_state,
        )

    def _classify(self, exc: BaseException) -> Failure | None:
        self.last_error = repr(exc)  # every failure passes here, retried or raised
        return classify(exc)

    def _set_state(self, failure: Failure | None) -> None:
        self.failing = failure
        self._sensor.redis_state(failure.value if failure else "ok")
        if self._on_health is not None:
            self._on_health()
