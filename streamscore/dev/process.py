"""Child server processes by PID: launch and wait until ready, stop, die with the parent, registry.

Every server started here is registered until it is stopped; `stop_all` (also run at exit)
stops what is left, and on Linux each child gets SIGKILL if the thread that started it dies.
"""

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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from streamscore.errors import DevStackError

logger = logging.getLogger(__name__)

ServerKind = Literal["broker", "valkey"]

_POLL_S = 0.02
_PORT_ATTEMPTS = 3  # when another process takes a free_port() pick before the child binds it
_LOG_TAIL_LINES = 20
_LOG_TAIL_BYTES = 8192
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PORT_IN_USE = re.compile(r"address (already )?in use", re.IGNORECASE)

_PR_SET_PDEATHSIG = 1
_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
        return host_port(self.host, self.port)

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


class _PortTakenError(DevStackError):
    """The child could not bind its port because another process took it first."""


def launch(
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
    """Start `argv(port, workdir)` on `port` (else a free one) and return once `probe` is true.

    With no port given, a child that lost its free port to another process is started again on
    a new one (up to 3 tries). Whatever fails, a started child is stopped before this raises.
    """
    deadline = time.monotonic() + timeout_s
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        if port is not None:
            bind_port = port
            _check_port_free(name, host, port)
        else:
            bind_port = free_port(host)
        # SIGINT and SIGTERM wait, blocked, from before the fork until the child is registered
        # and this try can stop it: a KeyboardInterrupt raised in between would leave a child
        # nobody stops, or be dropped by Python in the at-fork hooks it runs in the parent.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED_SIGNALS)
        try:
            server = _spawn(name, binary, host, bind_port, argv, stop_signal, password, mask)
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a deferred signal acts here
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
    mask: set[int | signal.Signals],
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
                preexec_fn=_child_setup(os.getpid(), mask),  # noqa: PLW1509
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
        host=client_host(host),
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


def _child_setup(parent_pid: int, mask: set[int | signal.Signals]) -> Callable[[], None]:
    # preexec_fn is unsafe when it runs Python that takes locks another thread may hold at
    # fork; this one only restores the signal mask from before launch() blocked SIGINT and
    # SIGTERM (exec keeps a mask) and calls prctl and getppid.
    die = die_with_parent(parent_pid) if _PRCTL is not None else None

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if die is not None:
            die()

    return setup


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


def _check_port_free(name: ServerKind, host: str, port: int) -> None:
    # SO_REUSEADDR as the servers themselves set it: TIME_WAIT leftovers of a just-stopped
    # server must not count as busy, a listening socket must.
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DevStackError(
                f"cannot start {name} on {host_port(host, port)}: port is in use ({exc.strerror})"
            ) from exc


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


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def client_host(host: str) -> str:
    """The address clients connect to for a server bound to `host`."""
    # A wildcard bind is reachable on loopback; clients cannot connect to the wildcard itself.
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def host_port(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _stop_all_at_exit() -> None:
    # PDEATHSIG covers a killed parent on Linux; this covers a normal exit everywhere.
    try:
        stop_all(timeout_s=2.0)
    except DevStackError as exc:
        logger.error("at exit: %s", exc)


atexit.register(_stop_all_at_exit)
