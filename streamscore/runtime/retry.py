"""Bounded retry by failure class: transient errors spend a budget; back-pressure waits.

A transient failure (connection, timeout, failover) is retried with jittered exponential
backoff for at most `budget_s`; then `RetryBudgetExhausted` is raised so that the process can
exit and be restarted from committed offsets. Back-pressure (Redis OOM) is retried for as long
as it lasts, because dropping the work would lose it and exiting would not free any memory; it
is logged every `report_every_s` so a wait is never silent. A fatal failure is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from streamscore.errors import RetryBudgetExhausted
from streamscore.store.errors import Failure

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Called with the failure class at the first failure of a run, and with None on recovery.
StateHook = Callable[[Failure | None], None]


async def with_retry(
    op: Callable[[], Awaitable[T]],
    *,
    operation: str,
    classify: Callable[[BaseException], Failure | None],
    budget_s: float,
    on_retry: Callable[[str], None],
    on_state: StateHook | None = None,
    first_delay_s: float = 0.05,
    max_delay_s: float = 2.0,
    report_every_s: float = 30.0,
) -> T:
    """Run `op` until it succeeds, retrying by the class `classify` gives each error."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + budget_s
    next_report = started + report_every_s
    delay = first_delay_s
    failing: Failure | None = None
    while True:
        try:
            result = await op()
        except Exception as exc:  # classified below; anything unknown is re-raised as is
            failure = classify(exc)
            if failure is None or failure is Failure.FATAL:
                raise
            now = loop.time()
            if failure is Failure.TRANSIENT and now + delay > deadline:
                log.error("%s failed for %.0f s, giving up: %r", operation, now - started, exc)
                raise RetryBudgetExhausted(operation, now - started, exc) from exc
            if failing is not failure:
                log.warning("%s failing (%s), retrying: %r", operation, failure.value, exc)
                failing = failure
                if on_state:
                    on_state(failure)
            elif now >= next_report:
                log.warning(
                    "%s still failing (%s) after %.0f s: %r", operation, failure.value,
                    now - started, exc,
                )  # fmt: skip
                next_report = now + report_every_s
            on_retry(operation)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, max_delay_s)
            continue
        if failing is not None:
            log.warning("%s recovered after %.1f s", operation, loop.time() - started)
            if on_state:
                on_state(None)
        return result
