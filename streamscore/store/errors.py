"""How a Redis failure is handled: retried, waited out, or fatal. One table for every caller."""

from __future__ import annotations

import re
from enum import Enum

import redis.exceptions as redis_errors

from streamscore.errors import ScriptError, TransientRedisError


class Failure(Enum):
    """The handling class of an error from Redis."""

    #: Will pass by itself: connection lost, timeout, loading, failover (READONLY, TRYAGAIN,
    #: CLUSTERDOWN). Retried with backoff within the retry budget; readiness says 503.
    TRANSIENT = "transient"
    #: Redis refuses writes until memory is freed (OOM under `noeviction`). Nothing was written;
    #: the same call is retried until it passes, however long that takes, and never dropped.
    BACKPRESSURE = "backpressure"
    #: Retrying cannot help: a wrong password, missing permissions, a script error.
    FATAL = "fatal"


_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    redis_errors.BusyLoadingError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
    redis_errors.ClusterError,
    redis_errors.AskError,
    redis_errors.MaxClientsReachedError,
    redis_errors.RedisClusterException,
    TimeoutError,  # a call past redis_timeout_s; the connection is dropped, the call retried
    ConnectionError,  # OSError from the socket layer
)
_FATAL_TYPES: tuple[type[BaseException], ...] = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
    redis_errors.AuthenticationWrongNumberOfArgsError,
    redis_errors.NoPermissionError,
)
#: Error codes that arrive wrapped in a script error ("ERR ... @user_script:12: -READONLY ...").
_TRANSIENT_CODE = re.compile(r"(?:^|[\s:-])(?:READONLY|LOADING|TRYAGAIN|CLUSTERDOWN|MASTERDOWN)\b")
_BACKPRESSURE_CODE = re.compile(r"(?:^|[\s:-])OOM\b")


def classify(exc: BaseException) -> Failure | None:
    """The handling class of `exc`, or None when it is not a Redis failure at all."""
    # Order matters: AuthenticationError is a ConnectionError, OutOfMemoryError a ResponseError.
    if isinstance(exc, TransientRedisError):  # store.client's: connection, failover, migration
        return Failure.TRANSIENT
    if isinstance(exc, ScriptError):  # store.client's Lua errors, located in their file
        return _by_code(exc.detail)
    if isinstance(exc, _FATAL_TYPES):
        return Failure.FATAL
    if isinstance(exc, redis_errors.OutOfMemoryError):
        return Failure.BACKPRESSURE
    if isinstance(exc, (*_TRANSIENT_TYPES, redis_errors.ConnectionError)):
        return Failure.TRANSIENT
    if isinstance(exc, redis_errors.ResponseError):
        return _by_code(str(exc))
    if isinstance(exc, redis_errors.RedisError):
        return Failure.FATAL
    return None


def _by_code(text: str) -> Failure:
    if _BACKPRESSURE_CODE.search(text):
        return Failure.BACKPRESSURE
    if _TRANSIENT_CODE.search(text):
        return Failure.TRANSIENT
    return Failure.FATAL
