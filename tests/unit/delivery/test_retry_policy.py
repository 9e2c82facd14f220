"""Retry classification, backoff with jitter, and Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamscore.delivery.policy import (
    RETRYABLE,
    Outcome,
    RetryPolicy,
    classify_status,
    parse_retry_after,
)

NOW = 1_714_564_800.0
rands = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
policies = st.builds(
    lambda attempts, base, factor: RetryPolicy(attempts, base, base * factor),
    st.integers(min_value=1, max_value=20),
    st.floats(min_value=0.001, max_value=10),
    st.floats(min_value=1, max_value=1000),
)


def retried_by_the_brief(status: int) -> bool | None:
    """The brief's rule: 2xx done (None); 408, 429 and 5xx retried; any other 4xx not; a
    redirect is not followed and not retried either."""
    if 200 <= status < 300:
        return None
    return status in (408, 429) or status >= 500


@pytest.mark.parametrize("status", range(100, 600))
def test_every_status_is_classified_as_the_brief_says(status: int) -> None:
    outcome = classify_status(status)
    expected = retried_by_the_brief(status)
    if expected is None:
        assert outcome is Outcome.DELIVERED
    else:
        assert (outcome in RETRYABLE) is expected, outcome
    if status == 429:
        assert outcome is Outcome.RATE_LIMITED
    if 300 <= status < 400:
        assert outcome is Outcome.REDIRECTED


def test_network_failures_are_retryable() -> None:
    assert {Outcome.TIMEOUT, Outcome.CONNECTION_ERROR} <= RETRYABLE
    assert Outcome.DELIVERED not in RETRYABLE


@given(policy=policies, retry=st.integers(min_value=1, max_value=200), rand=rands)
def test_backoff_is_exponential_capped_and_jittered_into_its_upper_half(
    policy: RetryPolicy, retry: int, rand: float
) -> None:
    full = min(policy.backoff_s * 2 ** min(retry - 1, 64), policy.backoff_max_s)
    delay = policy.backoff(retry, rand)
    assert full / 2 <= delay <= full
    assert delay <= policy.backoff_max_s


@given(policy=policies, retry=st.integers(min_value=1, max_value=100), rand=rands)
def test_backoff_never_shrinks_from_one_retry_to_the_next(
    policy: RetryPolicy, retry: int, rand: float
) -> None:
    assert policy.backoff(retry + 1, rand) >= policy.backoff(retry, rand)


@given(
    policy=policies,
    outcome=st.sampled_from(list(Outcome)),
    attempt=st.integers(min_value=1, max_value=25),
    retry_after=st.none() | st.floats(min_value=0, max_value=5000),
    rand=rands,
)
def test_decide_against_a_reference(
    policy: RetryPolicy, outcome: Outcome, attempt: int, retry_after: float | None, rand: float
) -> None:
    verdict = policy.decide(outcome, attempt, retry_after, rand)
    honours = outcome in (Outcome.RATE_LIMITED, Outcome.SERVER_ERROR) and retry_after is not None
    if outcome is Outcome.DELIVERED:
        assert (verdict.retry, verdict.reason) == (False, None)
    elif outcome not in RETRYABLE:
        assert (verdict.retry, verdict.reason) == (False, "rejected")
    elif attempt >= policy.attempts:
        assert (verdict.retry, verdict.reason) == (False, "attempts_exhausted")
    elif honours and retry_after is not None and retry_after > policy.backoff_max_s:
        assert (verdict.retry, verdict.reason) == (False, "retry_after_too_long")
    else:
        assert verdict.retry and verdict.reason is None
        backoff = policy.backoff(attempt, rand)
        if honours and retry_after is not None:
            assert verdict.delay_s == max(backoff, retry_after)
            assert verdict.delay_s >= retry_after  # never sooner than the receiver asked
        else:
            assert verdict.delay_s == backoff


@given(policy=policies, rand=rands)
def test_attempts_bound_the_requests(policy: RetryPolicy, rand: float) -> None:
    # A webhook failing forever gets exactly `attempts` requests.
    attempt = 1
    while policy.decide(Outcome.SERVER_ERROR, attempt, None, rand).retry:
        attempt += 1
    assert attempt == policy.attempts


@given(seconds=st.integers(min_value=0, max_value=10**9))
def test_retry_after_in_seconds(seconds: int) -> None:
    assert parse_retry_after(str(seconds), NOW) == seconds
    assert parse_retry_after(f" {seconds} ", NOW) == seconds


@given(delta=st.integers(min_value=-(10**6), max_value=10**6))
def test_retry_after_as_an_http_date(delta: int) -> None:
    date = format_datetime(datetime.fromtimestamp(NOW + delta, UTC), usegmt=True)
    assert parse_retry_after(date, NOW) == max(delta, 0)


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "٣", "Mon, 99 Foo 2024"])
def test_unreadable_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None
