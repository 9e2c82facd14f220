"""Is a server ready? A Kafka ApiVersions request, and a Redis PING answered by the right PID."""

from __future__ import annotations

import socket
import struct

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

PROBE_TIMEOUT_S = 0.5

# Kafka ApiVersions v0: the one request every broker must answer before any negotiation.
_API_VERSIONS_KEY = 18
_PROBE_CLIENT_ID = b"streamscore-devstack"
_PROBE_CORRELATION_ID = 0x5353


def probe_kafka(host: str, port: int) -> bool:
    """Whether a Kafka broker on host:port answers ApiVersions v0 without an error."""
    header = struct.pack(
        ">hhih", _API_VERSIONS_KEY, 0, _PROBE_CORRELATION_ID, len(_PROBE_CLIENT_ID)
    )
    request = header + _PROBE_CLIENT_ID
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as sock:
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


def probe_valkey(host: str, port: int, password: str | None, pid: int) -> bool:
    """Whether the Redis-protocol server on host:port answers PING and is process `pid`."""
    client = redis.Redis(
        host=host,
        port=port,
        password=password,
        socket_timeout=PROBE_TIMEOUT_S,
        socket_connect_timeout=PROBE_TIMEOUT_S,
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
    return bool(info.get("process_id") == pid)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks.extend(chunk)
    return bytes(chunks)
