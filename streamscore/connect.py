"""How a command reaches the stack it reads: its settings (what the user left unset comes from a
running `streamscore dev`) and a store checked with one PING, whose failure is one line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamscore.dev.state import ClientSettings
    from streamscore.store.store import RedisStore


def located_settings(config: Path | None) -> ClientSettings:
    """Settings for a command that reads a stack: what the user left unset, from `streamscore dev`.

    Every command but `worker` and `dev` (which run a stack rather than find one) takes its
    settings from here.
    """
    from streamscore.dev.state import client_settings, without_password

    located = client_settings(config)
    if located.stack is not None:
        settings = located.settings
        found = [f"PID {located.stack.pid}"]
        if "redis_url" in located.from_stack:
            found.append(f"redis {without_password(settings.redis_url.get_secret_value())}")
        if "kafka_bootstrap" in located.from_stack:
            found.append(f"kafka {settings.kafka_bootstrap}")
        print(f"streamscore: using `streamscore dev` ({', '.join(found)})", file=sys.stderr)
    return located


@contextlib.asynccontextmanager
async def open_store(located: ClientSettings) -> AsyncIterator[RedisStore]:
    """The store of `located`, checked with one PING; a failure is one line, and not retried."""
    from redis.exceptions import AuthenticationError

    from streamscore.dev.state import without_password
    from streamscore.errors import FatalStoreError, StoreUnreachable, TransientRedisError
    from streamscore.store.client import open_settings_client
    from streamscore.store.keys import KeySpace
    from streamscore.store.store import RedisStore

    settings = located.settings
    shown = without_password(settings.redis_url.get_secret_value())
    if located.stack is not None and "redis_url" in located.from_stack:
        where = f"{shown} (of `streamscore dev`, PID {located.stack.pid})"
        hint = "Has it stopped? Else set STREAMSCORE_REDIS_URL to your Redis."
    elif "redis_url" in settings.model_fields_set:
        where = f"{shown} (from STREAMSCORE_REDIS_URL or the settings file)"
        hint = "Check STREAMSCORE_REDIS_URL."
    else:
        where = f"{shown} (the default; no `streamscore dev` is running)"
        hint = "Start `streamscore dev`, or set STREAMSCORE_REDIS_URL to your Redis."

    @contextlib.contextmanager
    def one_line_errors() -> Iterator[None]:
        # store.client makes one attempt per call and raises TransientRedisError for a
        # connection that fails; a refused password comes through as redis-py's own error.
        try:
            yield
        except AuthenticationError as exc:
            raise FatalStoreError(
                f"Redis at {where}: authentication failed ({exc}). Set STREAMSCORE_REDIS_URL "
                "with its password: redis://:PASSWORD@HOST:PORT/DB."
            ) from None
        except TransientRedisError as exc:
            detail = str(exc).rstrip(".")
            raise StoreUnreachable(f"cannot reach Redis at {where}: {detail}. {hint}") from None

    with one_line_errors():
        client = await open_settings_client(settings)
    store = RedisStore(
        client,
        KeySpace(
            settings.redis_key_prefix, settings.redis_key_groups, settings.redis_forgotten_prefix
        ),
    )
    try:
        with one_line_errors():
            await store.ping()
            yield store
    finally:
        await store.close()
