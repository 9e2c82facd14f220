"""The embedded broker and Valkey start, answer real clients, stop, restart and die with us."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamscore import dev
from streamscore.errors import DevStackError

GONE_WITHIN_S = 5.0


def _gone(pid: int) -> bool:
    """True once pid no longer runs; a zombie left for a non-reaping init counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _wait_gone(pid: int, within_s: float = GONE_WITHIN_S) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return _gone(pid)


def _assert_reaped(pid: int) -> None:
    # Our own child: after stop() it must be reaped, not merely dead.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_port_closed(port: int, within_s: float = GONE_WITHIN_S) -> bool:
    # A killed process shows as a zombie a moment before its sockets are released.
    deadline = time.monotonic() + within_s
    while _port_accepts(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def valkey() -> Iterator[dev.EmbeddedServer]:
    server = dev.start_valkey()
    yield server
    server.stop()


@pytest.fixture
def broker() -> Iterator[dev.EmbeddedServer]:
    server = dev.start_broker()
    yield server
    server.stop()


def test_free_port_is_bindable() -> None:
    port = dev.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 1024 <= port <= 65535


async def test_broker_topic_produce_consume(broker: dev.EmbeddedServer, unique: str) -> None:
    # Started inside the running loop by the fixture: the readiness probe must not need one.
    assert broker.alive()
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert broker.pid in dev.started_pids()
    topic = f"ss.test.devstack-{unique}"

    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        assert topic in await admin.list_topics()
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"hello", key=b"lead-1")
    finally:
        await producer.stop()
    assert sent.topic == topic
    assert sent.offset == 0

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=f"ss-test-{unique}",
        auto_offset_reset="earliest",
        # Tansu holds the first JoinGroup for about half the session timeout (5 s by default).
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert (record.topic, record.key, record.value, record.offset) == (
        topic,
        b"lead-1",
        b"hello",
        0,
    )


def test_valkey_set_get(valkey: dev.EmbeddedServer) -> None:
    assert valkey.url == f"redis://127.0.0.1:{valkey.port}/0"
    with redis.Redis.from_url(valkey.url) as client:
        assert client.set("k", "v") is True
        assert client.get("k") == b"v"
        # Memory-only: no snapshots, no append-only file.
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.info("server")["process_id"] == valkey.pid


def test_valkey_password_is_required_and_not_shown() -> None:
    password = 'p@ss w:rd"/'
    server = dev.start_valkey(password=password)
    try:
        no_retry = Retry(NoBackoff(), 0)  # NOAUTH is a ConnectionError, retried by default
        with (
            redis.Redis(port=server.port, retry=no_retry) as anonymous,
            pytest.raises(redis.AuthenticationError),
        ):
            anonymous.ping()
        with redis.Redis.from_url(server.url) as client:
            assert client.ping() is True
        assert password not in repr(server)
        assert password not in " ".join(Path(f"/proc/{server.pid}/cmdline").read_text().split())
    finally:
        server.stop()


@pytest.mark.parametrize("start", [dev.start_broker, dev.start_valkey])
def test_stop_reaps_and_is_idempotent(start: Callable[..., dev.EmbeddedServer]) -> None:
    server = start()
    pid = server.pid
    assert server.alive()
    os.kill(pid, 0)  # running now

    server.stop()
    _assert_reaped(pid)
    assert not server.alive()
    assert pid not in dev.started_pids()
    assert not server.log_path.exists()  # temp dir removed
    assert not _port_accepts(server.port)

    server.stop()  # again: no error
    _assert_reaped(pid)


def test_stop_after_the_process_died_on_its_own(valkey: dev.EmbeddedServer) -> None:
    os.kill(valkey.pid, signal.SIGKILL)
    deadline = time.monotonic() + GONE_WITHIN_S
    while valkey.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not valkey.alive()
    assert valkey.pid not in dev.started_pids()
    valkey.stop()
    _assert_reaped(valkey.pid)


def test_broker_stops_fast_with_a_client_connected(broker: dev.EmbeddedServer) -> None:
    # Tansu drains connections on SIGTERM; stop() must not wait out its timeout for them.
    with socket.create_connection(("127.0.0.1", broker.port), timeout=1):
        started = time.monotonic()
        broker.stop(timeout_s=5.0)
        elapsed = time.monotonic() - started
    _assert_reaped(broker.pid)
    assert elapsed < 2.0


def test_valkey_restart_on_same_port_starts_empty(valkey: dev.EmbeddedServer) -> None:
    with redis.Redis.from_url(valkey.url) as client:
        client.set("survives", "no")
    valkey.stop()
    _assert_reaped(valkey.pid)

    again = dev.start_valkey(port=valkey.port)
    try:
        assert again.port == valkey.port
        assert again.url == valkey.url
        assert again.pid != valkey.pid
        with redis.Redis.from_url(again.url) as client:
            assert client.get("survives") is None
            assert client.dbsize() == 0
    finally:
        again.stop()


@pytest.mark.parametrize("start", [dev.start_broker, dev.start_valkey])
def test_start_on_a_busy_port_fails_clearly(start: Callable[..., dev.EmbeddedServer]) -> None:
    before = dev.started_pids()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(DevStackError, match=rf"127\.0\.0\.1:{port}: port is in use"):
            start(port=port)
    assert dev.started_pids() == before


def test_children_die_with_a_sigkilled_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import time
        from streamscore import dev
        valkey = dev.start_valkey()
        broker = dev.start_broker()
        print(valkey.pid, broker.pid, valkey.port, broker.port, flush=True)
        time.sleep(120)
        """
    )
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("wb") as stderr:
        parent = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            # The SIGKILLed helper cannot remove its temp dirs: keep them under tmp_path.
            env={**os.environ, "TMPDIR": str(tmp_path)},
        )
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 30)
        line = parent.stdout.readline() if ready else ""
        assert line, f"helper printed nothing: {stderr_path.read_text()}"
        valkey_pid, broker_pid, valkey_port, broker_port = map(int, line.split())
        assert not _gone(valkey_pid)
        assert not _gone(broker_pid)
    finally:
        parent.kill()
        parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()

    assert _wait_gone(valkey_pid), f"valkey pid {valkey_pid} outlived its SIGKILLed parent"
    assert _wait_gone(broker_pid), f"broker pid {broker_pid} outlived its SIGKILLed parent"
    assert _wait_port_closed(valkey_port)
    assert _wait_port_closed(broker_port)


def test_devstack_with_redis_url_starts_only_the_broker(redis_url: str) -> None:
    before = set(dev.started_pids())
    with dev.DevStack(redis_url=redis_url) as stack:
        assert stack.valkey is None
        assert stack.redis_url == redis_url
        assert stack.broker is not None
        assert stack.kafka_bootstrap == stack.broker.bootstrap
        assert set(dev.started_pids()) - before == {stack.broker.pid}
        with pytest.raises(DevStackError, match="did not start a Valkey"):
            _ = stack.valkey_port
        with pytest.raises(DevStackError, match="restart_valkey needs"):
            stack.restart_valkey()
        broker_pid = stack.broker.pid
    _assert_reaped(broker_pid)
    assert set(dev.started_pids()) == before
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping() is True  # the given server is left alone


def test_devstack_with_both_given_starts_nothing(redis_url: str) -> None:
    before = dev.started_pids()
    with dev.DevStack(kafka_bootstrap="127.0.0.1:1", redis_url=redis_url) as stack:
        assert (stack.broker, stack.valkey) == (None, None)
        assert stack.kafka_bootstrap == "127.0.0.1:1"
        assert dev.started_pids() == before


def test_devstack_starts_both_and_restarts_valkey_on_its_port() -> None:
    before = set(dev.started_pids())
    stack = dev.DevStack()
    with pytest.raises(DevStackError, match="not started"):
        _ = stack.redis_url
    with stack:
        assert stack.broker is not None
        assert stack.valkey is not None
        pids = {stack.broker.pid, stack.valkey.pid}
        assert set(dev.started_pids()) - before == pids
        port = stack.valkey_port
        url = stack.redis_url
        with redis.Redis.from_url(url) as client:
            client.set("k", "v")

        old_pid = stack.valkey.pid
        new = stack.restart_valkey()
        _assert_reaped(old_pid)
        assert (new.port, stack.valkey_port, stack.redis_url) == (port, port, url)
        with redis.Redis.from_url(url) as client:
            assert client.get("k") is None
        pids = {stack.broker.pid, new.pid}
    for pid in pids:
        _assert_reaped(pid)
    assert set(dev.started_pids()) == before
    stack.close()  # idempotent


def test_redis_server_fixture_outage_and_restart(redis_server: Any) -> None:
    with redis.Redis.from_url(redis_server.url) as client:
        client.set("outage", "1")
    port = redis_server.port
    redis_server.stop()
    assert not redis_server.alive()
    with redis.Redis.from_url(redis_server.url) as client, pytest.raises(redis.ConnectionError):
        client.ping()

    redis_server.start()
    assert redis_server.port == port
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.ping() is True
        assert client.get("outage") is None


def _blocked_signals(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(
        next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16
    )


@pytest.mark.parametrize("start", [dev.start_broker, dev.start_valkey])
def test_servers_start_with_no_signal_blocked(start: Callable[..., dev.EmbeddedServer]) -> None:
    # launch() blocks SIGINT and SIGTERM around the fork; exec would keep that mask.
    server = start()
    assert _blocked_signals(server.pid) == 0
    server.stop()
    assert not server.alive()


def test_a_sigint_during_the_fork_waits_until_launch_can_stop_the_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A KeyboardInterrupt between fork and registration would orphan the child."""
    real_popen = subprocess.Popen
    children: list[subprocess.Popen[bytes]] = []

    def popen_then_sigint(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        child = real_popen(*args, **kwargs)
        children.append(child)
        main = threading.main_thread().ident
        assert main is not None
        signal.pthread_kill(main, signal.SIGINT)  # to this thread, so its mask decides
        return child

    before = set(dev.started_pids())
    monkeypatch.setattr(subprocess, "Popen", popen_then_sigint)
    try:
        with pytest.raises(KeyboardInterrupt):
            dev.start_broker()  # it runs on without its work dir, where Valkey would not start
        assert len(children) == 1
        assert _wait_gone(children[0].pid), "the child outlived the interrupted launch"
        assert set(dev.started_pids()) == before
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
