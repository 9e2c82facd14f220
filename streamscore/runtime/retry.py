"""Bounded retry with exponential backoff for transient Redis and broker errors."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import Counter

log = logging.getLogger(__name__)
T = TypeVar("T")


async def with_retry(
    op: Callable[[], Awaitable[T]],
    *,
    operation: str,
    transient: tuple[type[BaseException], ...],
    retries_total: Counter,
    max_elapsed_s: float,
    on_failing: Callable[[bool], None] | None = None,
    first_delay_s: float = 0.05,
    max_delay_s: float = 2.0,
) -> T:
    """Run `op`, retrying `transient` errors with jittered backoff for up to `max_elapsed_s`.

    `on_failing(True)` is called at the first failure and `on_failing(False)` on recovery, so
    readiness can follow the outage. After the budget the last error is raised.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_elapsed_s
    delay = first_delay_s
    failing = False
    while True:
        try:
            result = await op()
        except transient as exc:
            if loop.time() + delay > deadline:
                log.error("%s failed for %.0fs, giving up: %s", operation, max_elapsed_s, exc)
                raise
            if not failing:
                failing = True
                log.warning("%s failing, retrying with backoff: %s", operation, exc)
                if on_failing:
                    on_failing(True)
            retries_total.labels(operation=operation).inc()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, max_delay_s)
            continue
        if failing:
            log.warning("%s recovered", operation)
            if on_failing:
                on_failing(False)
        return result
