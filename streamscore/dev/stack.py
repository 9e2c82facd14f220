"""DevStack: the broker and Valkey a developer or test needs, started unless given, then stopped."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from streamscore.dev.process import EmbeddedServer
from streamscore.dev.servers import start_broker, start_valkey
from streamscore.errors import DevStackError


class DevStack:
    """Context manager that starts the broker and/or Valkey that were not given, and stops them."""

    def __init__(
        self,
        kafka_bootstrap: str | None = None,
        redis_url: str | None = None,
        *,
        host: str = "127.0.0.1",
        timeout_s: float = 15,
        redis_binary: Path | None = None,
    ) -> None:
        self._given_bootstrap = kafka_bootstrap
        self._redis_binary = redis_binary
        self._given_redis_url = redis_url
        self._host = host
        self._timeout_s = timeout_s
        self.broker: EmbeddedServer | None = None
        self.valkey: EmbeddedServer | None = None
        self._started = False

    @property
    def kafka_bootstrap(self) -> str:
        """The given bootstrap string, or the embedded broker's once started."""
        if self._given_bootstrap is not None:
            return self._given_bootstrap
        if self.broker is None:
            raise DevStackError("DevStack is not started: no Kafka bootstrap yet")
        return self.broker.bootstrap

    @property
    def redis_url(self) -> str:
        """The given redis URL, or the embedded Valkey's once started."""
        if self._given_redis_url is not None:
            return self._given_redis_url
        if self.valkey is None:
            raise DevStackError("DevStack is not started: no redis URL yet")
        return self.valkey.url

    @property
    def valkey_port(self) -> int:
        """Port of the embedded Valkey (stays the same across restart_valkey)."""
        if self.valkey is None:
            raise DevStackError("this DevStack did not start a Valkey server")
        return self.valkey.port

    def start(self) -> DevStack:
        """Start whatever was not given; on failure stop what was already started."""
        if self._started:
            return self
        self._started = True
        try:
            if self._given_bootstrap is None:
                self.broker = start_broker(host=self._host, timeout_s=self._timeout_s)
            if self._given_redis_url is None:
                self.valkey = start_valkey(
                    host=self._host, timeout_s=self._timeout_s, binary=self._redis_binary
                )
        except BaseException:
            self.close()
            raise
        return self

    def restart_valkey(self, timeout_s: float = 5.0) -> EmbeddedServer:
        """Stop the embedded Valkey (if still running) and start an empty one on the same port."""
        old = self.valkey
        if old is None:
            raise DevStackError(
                "restart_valkey needs a Valkey started by this DevStack, "
                "but it was given redis_url or is not started"
            )
        old.stop(timeout_s)
        self.valkey = start_valkey(
            port=old.port,
            host=self._host,
            password=old.password,
            timeout_s=self._timeout_s,
            binary=self._redis_binary,
        )
        return self.valkey

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the servers this DevStack started (never the given ones); idempotent."""
        # Valkey first: the broker is what a worker would be blocked on last.
        servers = [s for s in (self.valkey, self.broker) if s is not None]
        self._started = False
        for server in servers:
            server.stop(timeout_s)

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
