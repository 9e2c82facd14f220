"""A real Redis Cluster for tests and benchmarks: redis-server nodes started by streamscore.dev.

`LocalCluster.start` runs Debian's redis-server with `cluster-enabled yes` on free loopback
ports (streamscore.dev's process control, so the session's leak guard sees every node), assigns the
slots evenly, joins the nodes with CLUSTER MEET, attaches the replicas, and waits until every
node reports `cluster_state:ok` and the same slot map. `ClusterAdmin` drives any cluster, an
external one too, by node address: CLUSTER NODES, slot migration steps, failover.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from streamscore import dev
from streamscore.errors import DevStackError

CLUSTER_URL_ENV = "STREAMSCORE_TEST_REDIS_CLUSTER_URL"
HASH_SLOTS = 16384
_POLL_S = 0.05
NODES = ("CLUSTER", "NODES")


def redis_server_binary() -> Path:
    """Debian's redis-server (the `make system-deps` package), which runs in cluster mode."""
    found = shutil.which("redis-server")
    if found is None:
        raise DevStackError("no redis-server on PATH: run `make system-deps` (Debian's package)")
    return Path(found)


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One line of CLUSTER NODES."""

    node_id: str
    host: str
    port: int
    primary: bool
    primary_id: str | None  # of a replica
    failed: bool
    slots: tuple[tuple[int, int], ...]  # served ranges, inclusive (importing/migrating left out)

    @property
    def address(self) -> str:
        """host:port."""
        return f"{self.host}:{self.port}"

    def serves(self, slot: int) -> bool:
        """Whether this node owns `slot`."""
        return any(lo <= slot <= hi for lo, hi in self.slots)


def parse_cluster_nodes(text: str) -> list[NodeRow]:
    """CLUSTER NODES output as rows (handshake and no-address nodes left out)."""
    rows = []
    for line in text.strip().splitlines():
        fields = line.split()
        node_id, address, flags, master = fields[0], fields[1], fields[2].split(","), fields[3]
        if "handshake" in flags or "noaddr" in flags:
            continue
        host, _, port = address.split("@")[0].rpartition(":")
        slots = []
        for item in fields[8:]:
            if item.startswith("["):
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        rows.append(
            NodeRow(
                node_id=node_id,
                host=host,
                port=int(port),
                primary="master" in flags,
                primary_id=None if master == "-" else master,
                failed="fail" in flags or "fail?" in flags,
                slots=tuple(slots),
            )
        )
    return rows


class ClusterAdmin:
    """Administrative commands on the nodes of one cluster, by address (sync redis-py)."""

    def __init__(self, url: str) -> None:
        self.url = url
        template = redis.ConnectionPool.from_url(url)
        self._kwargs = {
            k: v for k, v in template.connection_kwargs.items() if k not in ("host", "port", "db")
        }
        self._connection_class = template.connection_class
        self._seed = (
            str(template.connection_kwargs["host"]),
            int(template.connection_kwargs["port"]),
        )
        template.disconnect()
        self._clients: dict[tuple[str, int], redis.Redis] = {}

    def node(self, host: str, port: int) -> redis.Redis:
        """A client of the node at host:port (cached; 5 s socket timeout)."""
        key = (host, port)
        client = self._clients.get(key)
        if client is None:
            pool = redis.ConnectionPool(
                connection_class=self._connection_class,
                host=host,
                port=port,
                socket_timeout=5,
                socket_connect_timeout=2,
                **self._kwargs,
            )
            client = redis.Redis(connection_pool=pool)
            self._clients[key] = client
        return client

    def url_of(self, row: NodeRow) -> str:
        """The cluster's URL (credentials, scheme) with `row`'s address: a seed that is up."""
        parts = urlsplit(self.url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{row.address}" if userinfo else row.address
        return urlunsplit(parts._replace(netloc=netloc))

    def at(self, row: NodeRow) -> redis.Redis:
        """A client of the node of a CLUSTER NODES row."""
        return self.node(row.host, row.port)

    def nodes(self) -> list[NodeRow]:
        """CLUSTER NODES, from the first node that answers."""
        return parse_cluster_nodes(_text(self.ask_any("CLUSTER", "NODES")))

    def ask_any(self, *args: Any) -> Any:
        """A command on the first node that answers: the seed, then every node met so far."""
        error: Exception | None = None
        for host, port in dict.fromkeys([self._seed, *self._clients]):
            try:
                return raw_command(self.node(host, port), *args)
            except redis.ConnectionError as exc:
                error = exc
        raise DevStackError(f"no cluster node answered {args[0]}: {error}")

    def primaries(self) -> list[NodeRow]:
        """The live primaries, ordered by their first slot."""
        rows = [r for r in self.nodes() if r.primary and not r.failed and r.slots]
        return sorted(rows, key=lambda r: r.slots[0][0])

    def owner(self, slot: int) -> NodeRow:
        """The primary serving `slot`."""
        for row in self.nodes():
            if row.primary and not row.failed and row.serves(slot):
                return row
        raise DevStackError(f"no live primary serves slot {slot}")

    def replica_of(self, primary: NodeRow) -> NodeRow:
        """A live replica of `primary`."""
        for row in self.nodes():
            if row.primary_id == primary.node_id and not row.failed:
                return row
        raise DevStackError(f"{primary.address} has no live replica")

    def keyslot(self, key: str) -> int:
        """The slot of `key`, as the cluster computes it."""
        return int(self.ask_any("CLUSTER", "KEYSLOT", key))

    # --- slot migration, the steps redis-cli --cluster reshard takes ---------------------

    def begin_migration(self, slot: int, source: NodeRow, target: NodeRow) -> None:
        """Mark `slot` IMPORTING on the target and MIGRATING on the source (target first)."""
        raw_command(self.at(target), "CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        raw_command(self.at(source), "CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)

    def migrate_keys(
        self, slot: int, source: NodeRow, target: NodeRow, only: list[str] | None = None
    ) -> int:
        """MIGRATE the slot's keys (or `only` these) from source to target; returns how many."""
        keys = only
        if keys is None:
            raw = raw_command(self.at(source), "CLUSTER", "GETKEYSINSLOT", slot, 100_000)
            keys = [_text(k) for k in raw]
        if keys:
            raw_command(
                self.at(source),
                "MIGRATE",
                target.host,
                target.port,
                "",
                0,
                5000,
                *self._auth(),
                "KEYS",
                *keys,
            )
        return len(keys)

    def finish_migration(self, slot: int, target: NodeRow) -> None:
        """SETSLOT NODE target on the target, then every other primary (the source among them)."""
        raw_command(self.at(target), "CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        for row in self.primaries():
            if row.node_id != target.node_id:
                raw_command(self.at(row), "CLUSTER", "SETSLOT", slot, "NODE", target.node_id)

    def move_slot(self, slot: int, target: NodeRow) -> None:
        """The whole migration of `slot` to `target`, keys included."""
        source = self.owner(slot)
        self.begin_migration(slot, source, target)
        self.migrate_keys(slot, source, target)
        self.finish_migration(slot, target)

    def _auth(self) -> tuple[Any, ...]:
        password = self._kwargs.get("password")
        if not password:
            return ()
        username = self._kwargs.get("username")
        return ("AUTH2", username, password) if username else ("AUTH", password)

    # --- state -------------------------------------------------------------------------

    def wait_ok(self, addresses: list[tuple[str, int]], timeout_s: float = 30.0) -> None:
        """Until every node at `addresses` says cluster_state:ok with one agreed slot map."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            try:
                maps = set()
                ok = True
                for host, port in addresses:
                    client = self.node(host, port)
                    info = _text(raw_command(client, "CLUSTER", "INFO"))
                    if "cluster_state:ok" not in info:
                        ok, last = False, f"{host}:{port} not ok"
                        break
                    maps.add(_slot_map(raw_command(client, "CLUSTER", "SLOTS")))
                if ok and len(maps) == 1:
                    return
                if ok:
                    last = f"{len(maps)} different slot maps"
            except redis.RedisError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise DevStackError(f"cluster not ok after {timeout_s} s: {last}")
            time.sleep(_POLL_S)

    def close(self) -> None:
        """Close every admin connection."""
        for client in self._clients.values():
            # A client given its pool leaves the pool open on close().
            client.connection_pool.disconnect()
            client.close()
        self._clients.clear()


class LocalCluster:
    """A cluster of redis-server processes this process started: primaries, then replicas."""

    def __init__(
        self, servers: list[dev.EmbeddedServer], primaries: int, bus_ports: dict[int, int]
    ) -> None:
        self.servers = servers
        self.primary_count = primaries
        self.bus_ports = bus_ports
        self.admin = ClusterAdmin(self.url)

    @property
    def url(self) -> str:
        """redis:// URL of the first node (any node leads to the others)."""
        return f"redis://{self.servers[0].address}"

    @classmethod
    def start(
        cls,
        primaries: int = 3,
        replicas_per_primary: int = 0,
        node_timeout_ms: int = 5000,
        timeout_s: float = 30.0,
    ) -> LocalCluster:
        """Start the nodes on free loopback ports and join them; stops them all on failure."""
        binary = redis_server_binary()
        servers: list[dev.EmbeddedServer] = []
        bus_ports: dict[int, int] = {}
        try:
            for _ in range(primaries * (1 + replicas_per_primary)):
                bus_port = dev.free_port()
                args = [
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(node_timeout_ms),
                    # An explicit bus port: the default, port + 10000, fails above port 55535.
                    "--cluster-port", str(bus_port),
                    # A replica's first sync starts at once, not after the default 5 s.
                    "--repl-diskless-sync-delay", "0",
                ]  # fmt: skip
                servers.append(dev.start_valkey(binary=binary, extra_args=args))
                bus_ports[servers[-1].port] = bus_port
        except BaseException:
            for server in servers:
                server.stop()
            raise
        cluster = cls(servers, primaries, bus_ports)
        try:
            cluster._join(replicas_per_primary, timeout_s)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _join(self, replicas_per_primary: int, timeout_s: float) -> None:
        admin = self.admin
        first = self.servers[0]
        per = HASH_SLOTS // self.primary_count
        for index, server in enumerate(self.servers):
            client = admin.node(server.host, server.port)
            # Distinct epochs up front, as redis-cli does: no collision rounds to wait out.
            raw_command(client, "CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            if index < self.primary_count:
                lo = index * per
                hi = HASH_SLOTS - 1 if index == self.primary_count - 1 else lo + per - 1
                raw_command(client, "CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for server in self.servers[1:]:
            meet = ("CLUSTER", "MEET", server.host, server.port, self.bus_ports[server.port])
            raw_command(admin.node(first.host, first.port), *meet)
        self._wait_known(timeout_s)
        ids = {s.port: self._my_id(s) for s in self.servers}
        primaries = self.servers[: self.primary_count]
        for index, server in enumerate(self.servers[self.primary_count :]):
            primary = primaries[index // replicas_per_primary]
            raw_command(
                admin.node(server.host, server.port), "CLUSTER", "REPLICATE", ids[primary.port]
            )
        addresses = [(s.host, s.port) for s in self.servers]
        admin.wait_ok(addresses, timeout_s)
        self._wait_replicas_linked(timeout_s)
        self._wait_known(timeout_s, replicas=len(self.servers) - self.primary_count)

    def _my_id(self, server: dev.EmbeddedServer) -> str:
        return _text(raw_command(self.admin.node(server.host, server.port), "CLUSTER", "MYID"))

    def _wait_known(self, timeout_s: float, replicas: int = 0) -> None:
        # Until every node sees every node, and the same `replicas` of them as replicas.
        deadline = time.monotonic() + timeout_s
        while True:
            views = [
                parse_cluster_nodes(_text(raw_command(self.admin.node(s.host, s.port), *NODES)))
                for s in self.servers
            ]
            roles = {frozenset((r.node_id, r.primary_id) for r in view) for view in views}
            if (
                all(len(view) == len(self.servers) for view in views)
                and len(roles) == 1
                and sum(r.primary_id is not None for r in views[0]) == replicas
            ):
                return
            if time.monotonic() >= deadline:
                counts = [len(view) for view in views]
                raise DevStackError(f"nodes still meeting after {timeout_s} s: {counts} known")
            time.sleep(_POLL_S)

    def _wait_replicas_linked(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for server in self.servers[self.primary_count :]:
            client = self.admin.node(server.host, server.port)
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() >= deadline:
                    raise DevStackError(f"replica {server.address} not linked after {timeout_s} s")
                time.sleep(_POLL_S)

    def server_at(self, port: int) -> dev.EmbeddedServer:
        """The process of the node on `port`."""
        for server in self.servers:
            if server.port == port:
                return server
        raise KeyError(port)

    def kill(self, port: int) -> int:
        """SIGKILL the node on `port` by its PID and reap it; returns the PID."""
        server = self.server_at(port)
        os.kill(server.pid, signal.SIGKILL)
        server.stop()
        return server.pid

    def stop(self) -> None:
        """Stop every node by PID (idempotent)."""
        self.admin.close()
        for server in self.servers:
            server.stop()


@contextlib.contextmanager
def local_cluster(**kwargs: Any) -> Iterator[LocalCluster]:
    """LocalCluster.start(**kwargs), stopped on exit."""
    cluster = LocalCluster.start(**kwargs)
    try:
        yield cluster
    finally:
        cluster.stop()


def _slot_map(rows: Any) -> tuple[tuple[int, int, int], ...]:
    return tuple(sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in rows))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def raw_command(client: redis.Redis, *args: Any) -> Any:
    """A raw command (no response callback: CLUSTER subcommands are sent as two words)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]
