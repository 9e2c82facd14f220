"""Posting one handoff to one webhook: signed request, outcome, retries with backoff."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import aiohttp

from streamscore import __version__
from streamscore.delivery.deadletter import WebhookRef, redact_url
from streamscore.delivery.metrics import DeliverySensor
from streamscore.delivery.policy import Outcome, RetryPolicy, classify_status, parse_retry_after
from streamscore.delivery.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature_header

log = logging.getLogger(__name__)

USER_AGENT: Final = f"streamscore-delivery/{__version__}"
ATTEMPT_HEADER: Final = "X-Streamscore-Attempt"
#: How much of an error answer is read and kept for the dead letter (Slack says why in it).
RESPONSE_EXCERPT_BYTES: Final = 512


@dataclass(frozen=True, slots=True)
class Webhook:
    """A configured webhook: its URL (a secret, kept out of repr) and how it may be named."""

    url: str = field(repr=False)
    ref: WebhookRef

    @classmethod
    def at(cls, index: int, url: str) -> Webhook:
        """The webhook at position `index` of delivery_webhook_urls."""
        return cls(url, WebhookRef(index, redact_url(url)))


class Attempt(NamedTuple):
    """How one request ended."""

    outcome: Outcome
    status: int | None
    retry_after_s: float | None
    detail: str
    response_excerpt: str | None


class Result(NamedTuple):
    """How the delivery of one handoff to one webhook ended, after every attempt."""

    webhook: WebhookRef
    delivered: bool
    attempts: int
    last: Attempt
    reason: str | None  # the dead-letter reason when not delivered


def _error_detail(exc: BaseException, timeout_s: float) -> str:
    # Only the class and the OS reason: an exception's text may quote the URL (a secret).
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"{type(exc).__name__}: {exc.os_error.strerror or type(exc.os_error).__name__}"
    return type(exc).__name__


class WebhookSender:
    """Signs and posts bodies; retries a webhook by the RetryPolicy until it is done."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        secret: str,
        policy: RetryPolicy,
        timeout_s: float,
        sensor: DeliverySensor,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._session = session
        self._secret = secret
        self._policy = policy
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s
        self._sensor = sensor
        self._clock = clock
        self._rand = rand
        self._sleep = sleep

    async def post(self, webhook: Webhook, body: bytes, handoff_id: str, attempt: int) -> Attempt:
        """One signed POST of `body`; never raises for a network failure or an error status."""
        # Signed at each attempt, not once: a retry minutes later must still fall within the
        # receiver's replay tolerance.
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Idempotency-Key": handoff_id,
            SIGNATURE_HEADER: signature_header(self._secret, timestamp, body),
            TIMESTAMP_HEADER: str(timestamp),
            ATTEMPT_HEADER: str(attempt),
        }
        started = time.monotonic()
        try:
            # No redirects: the signed handoff goes to the configured URL and nowhere else.
            async with self._session.post(
                webhook.url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                outcome = classify_status(resp.status)
                excerpt = None
                if outcome is not Outcome.DELIVERED:
                    raw = await resp.content.read(RESPONSE_EXCERPT_BYTES)
                    excerpt = raw.decode("utf-8", "replace")
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock())
                result = Attempt(outcome, resp.status, retry_after, f"HTTP {resp.status}", excerpt)
        except TimeoutError as exc:  # aiohttp's timeouts subclass it
            result = Attempt(Outcome.TIMEOUT, None, None, _error_detail(exc, self._timeout_s), None)
        except (aiohttp.ClientError, OSError) as exc:
            detail = _error_detail(exc, self._timeout_s)
            result = Attempt(Outcome.CONNECTION_ERROR, None, None, detail, None)
        self._sensor.request_done(webhook.ref.index, result.outcome, time.monotonic() - started)
        return result

    async def deliver(self, webhook: Webhook, body: bytes, handoff_id: str) -> Result:
        """Post until delivered, refused, or out of attempts; returns how it ended."""
        attempt = 0
        while True:
            attempt += 1
            last = await self.post(webhook, body, handoff_id, attempt)
            verdict = self._policy.decide(last.outcome, attempt, last.retry_after_s, self._rand())
            if not verdict.retry:
                return Result(webhook.ref, verdict.reason is None, attempt, last, verdict.reason)
            log.debug(
                "webhook %d (%s): %s for handoff %s, attempt %d; retrying in %.2f s",
                webhook.ref.index, webhook.ref.redacted, last.detail, handoff_id, attempt,
                verdict.delay_s,
            )  # fmt: skip
            self._sensor.retrying(webhook.ref.index)
            await self._sleep(verdict.delay_s)
