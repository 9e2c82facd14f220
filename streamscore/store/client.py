"""The Redis client layer: Lua script calls packed ahead of time, on one server or a Redis Cluster.

Two implementations share the `RedisClient` protocol: `SingleNodeClient` (one server, one
connection pool) and `ClusterClient` (a slot map of the primaries, one pool each, MOVED and ASK
followed). Both send a script call as bytes packed by hiredis beforehand (`pack_script_call`),
load a script on a server that lacks it (NOSCRIPT -> SCRIPT LOAD -> resend), and return raw
RESP2 replies (bytes, int, lists; no redis-py response callbacks).

Errors a caller sees:
- `TransientRedisError`: connection lost or refused, a timeout inside redis-py, TRYAGAIN,
  CLUSTERDOWN/MASTERDOWN, too many redirects, or no node answering CLUSTER SLOTS. The call may
  or may not have run; every streamscore script is idempotent, so the caller retries it after
  a backoff, and the cluster client refreshes its slot map before the next call.
- `ScriptError`: a Lua error, rewritten to name the script's own file and line.
- redis-py's own classes, passed through for the caller to map: `OutOfMemoryError` (OOM),
  `ReadOnlyError` (READONLY), `BusyLoadingError` (LOADING), `AuthenticationError` (NOAUTH,
  WRONGPASS), `NoPermissionError`, `ClusterCrossSlotError`, other `ResponseError`s.
- `ConfigError`: the URL or setting does not fit the server: a single-node client got MOVED or
  ASK (the server is a cluster node), a cluster client's server is not one, a cluster URL with a
  database other than 0.

No client here sets a socket timeout by default: redis-py sends through asyncio.wait_for when one
is set, which on Python 3.11 runs the send in a new task behind every ready callback (5 to 64 ms
a 0.6 MB call, see app.open_store). Callers bound their calls with asyncio.timeout.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import itertools
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import hiredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamscore.config import Settings
from streamscore.errors import ConfigError, ScriptError, TransientRedisError

log = logging.getLogger(__name__)

Key = str | bytes
Arg = str | bytes | int | float
ClusterSetting = Literal["auto", "true", "false"]

#: MOVED and ASK redirects one call follows before it gives up (as a transient error).
MAX_REDIRECTS = 5
#: Bound on each CLUSTER SLOTS query of a topology refresh; the next node is tried after it.
REFRESH_TIMEOUT_S = 2.0

_ASKING = b"*1\r\n$6\r\nASKING\r\n"
_CLUSTER_SLOTS = b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n"
# Errors that subclass redis-py's ConnectionError but that a retry cannot repair, or that the
# reliability layer maps itself (LOADING): passed through as they are.
_NOT_TRANSIENT = (AuthenticationError, AuthorizationError, BusyLoadingError)


# --- scripts -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script: its file name (for errors), its source and its SHA1 (computed here)."""

    name: str
    source: str
    sha1: str = field(init=False)
    # (file name, first line of that file in `source`), ascending; one entry per joined file.
    parts: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha1", hashlib.sha1(self.source.encode()).hexdigest())
        if not self.parts:
            object.__setattr__(self, "parts", ((self.name, 1),))

    @classmethod
    def join(cls, name: str, files: Sequence[tuple[str, str]]) -> LuaScript:
        """One script from several files (helpers first); errors name the file they fall in."""
        texts: list[str] = []
        parts: list[tuple[str, int]] = []
        line = 1
        for file_name, raw in files:
            text = raw if raw.endswith("\n") else raw + "\n"
            parts.append((file_name, line))
            texts.append(text)
            line += text.count("\n")
        return cls(name, "".join(texts), parts=tuple(parts))

    @classmethod
    def from_package(cls, *file_names: str, package: str = "streamscore.store") -> LuaScript:
        """The script made of these files of `package`/scripts, named after the last one."""
        folder = resources.files(package) / "scripts"
        files = [(n, (folder / n).read_text(encoding="utf-8")) for n in file_names]
        return cls.join(file_names[-1], files)

    def locate(self, line: int) -> tuple[str, int]:
        """The file and the line in it of a line of `source`."""
        starts = [start for _, start in self.parts]
        index = max(bisect.bisect_right(starts, line) - 1, 0)
        file_name, start = self.parts[index]
        return file_name, line - start + 1


# Redis 7: "user_script:2: boom script: <sha>, on @user_script:2." (Valkey leaves out the sha).
_WHERE_SUFFIX = re.compile(r"\s*script:\s*(?:[0-9a-f]{40})?,?\s*on @user_script:(\d+)\.?\s*$")
_WHERE_INLINE = re.compile(r"user_script:(\d+):\s*")


def script_error(script: LuaScript, error: ResponseError) -> ScriptError:
    """Redis's error of a script, naming the script's file and line instead of user_script."""
    text = str(error)
    line: int | None = None
    suffix = _WHERE_SUFFIX.search(text)
    if suffix:
        line = int(suffix.group(1))
        text = text[: suffix.start()]
    inline = _WHERE_INLINE.search(text)
    if inline:
        line = line if line is not None else int(inline.group(1))
        text = text[: inline.start()] + text[inline.end() :]
    if line is None:
        return ScriptError(script.name, None, text)
    file_name, file_line = script.locate(line)
    return ScriptError(file_name, file_line, text)


def _located(script: LuaScript, error: ResponseError) -> Exception:
    """A plain script error becomes a ScriptError; a typed one (OOM...) keeps its class."""
    if type(error) is ResponseError:
        return script_error(script, error)
    located = script_error(script, error)
    if located.line is not None:
        error.add_note(f"raised at {located.file}:{located.line}")
    return error


# --- packed calls --------------------------------------------------------------------------


class CrossSlotKeys(ValueError):
    """The keys of one script call do not all hash to one Redis Cluster slot."""


@dataclass(frozen=True, slots=True)
class PackedCall:
    """One EVALSHA call in the Redis protocol, but for its array header and tail arguments."""

    script: LuaScript
    slot: int | None  # of every key; None for a call without keys
    arguments: int  # EVALSHA, sha1, numkeys, keys, args: the tail arguments not counted
    body: bytes


def pack_script_call(
    script: LuaScript, keys: Sequence[Key], args: Sequence[Arg], *, check_slot: bool = True
) -> PackedCall:
    """Encode an EVALSHA call ahead of time (hiredis), off the path between reply and send.

    `check_slot` verifies that every key hashes to keys[0]'s slot: about 0.09 us a key when
    they share keys[0]'s prefix up to its hash tag (KeySpace keys do), exact otherwise.
    """
    slot: int | None = None
    if keys:
        slot = key_slot(_bytes(keys[0]))
        if check_slot and len(keys) > 1 and not _share_tag_prefix(keys):
            _check_one_slot(keys, slot)
    command = ("EVALSHA", script.sha1, len(keys), *keys, *args)
    # hiredis's stub types the argument as a 1-tuple; any length is accepted.
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]
    return PackedCall(script, slot, len(command), packed[packed.index(b"\r\n") + 2 :])


def _share_tag_prefix(keys: Sequence[Key]) -> bool:
    # Keys that start with keys[0] up to the end of its first {tag} share that tag, so their
    # slot: their first "{" and the first "}" after it are where keys[0] has them.
    first = keys[0]
    if isinstance(first, str):
        opening, closing = first.find("{"), first.find("}", first.find("{") + 1)
        if opening < 0 or closing <= opening + 1:
            return False
        try:
            return all(map(str.startswith, keys, itertools.repeat(first[: closing + 1])))  # type: ignore[arg-type]
        except TypeError:  # bytes among them
            return False
    opening, closing = first.find(b"{"), first.find(b"}", first.find(b"{") + 1)
    if opening < 0 or closing <= opening + 1:
        return False
    try:
        return all(map(bytes.startswith, keys, itertools.repeat(first[: closing + 1])))  # type: ignore[arg-type]
    except TypeError:
        return False


def _check_one_slot(keys: Sequence[Key], slot: int) -> None:
    for key in keys:
        other = key_slot(_bytes(key))
        if other != slot:
            raise CrossSlotKeys(
                f"key {key!r} is in slot {other}, not {slot} like {keys[0]!r}: "
                "the keys of one call must share a hash tag"
            )


def _bytes(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, float):
        return repr(value).encode()
    return str(value).encode()


def _frame(packed: PackedCall, tail: tuple[Arg, ...]) -> list[bytes]:
    chunks = [b"*%d\r\n" % (packed.arguments + len(tail)), packed.body]
    for value in tail:
        raw = _bytes(value)
        chunks.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return chunks


def _pack(args: tuple[Arg, ...]) -> list[bytes]:
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return [packed]


# --- the protocol --------------------------------------------------------------------------


@dataclass(slots=True)
class ClientStats:
    """Counters of the events a client handled inside a call (for tests and metrics hooks)."""

    moved: int = 0
    asked: int = 0
    script_loads: int = 0
    refreshes: int = 0


class RedisClient(Protocol):
    """What the store needs of Redis, on one server or a cluster alike."""

    @property
    def cluster(self) -> bool:
        """True for a Redis Cluster client."""
        ...

    @property
    def stats(self) -> ClientStats:
        """Redirects, script loads and topology refreshes so far."""
        ...

    async def run_packed(self, packed: PackedCall, *tail_args: Arg) -> Any:
        """Send a packed script call, `tail_args` appended to its ARGV; the raw reply."""
        ...

    async def run_script(self, script: LuaScript, keys: Sequence[Key], args: Sequence[Arg]) -> Any:
        """Pack and send one script call."""
        ...

    async def load_script(self, script: LuaScript) -> None:
        """SCRIPT LOAD on every primary (a start-up check; NOSCRIPT reloads anyway)."""
        ...

    async def execute(self, *args: Arg, key: Key) -> Any:
        """One command on the node owning `key`'s slot; the raw reply."""
        ...

    async def execute_on_primaries(self, *args: Arg) -> dict[str, Any]:
        """One command on every primary (SCRIPT FLUSH, INFO, DBSIZE...): node name -> reply."""
        ...

    def scan_iter(self, match: str | None = None, count: int = 1000) -> AsyncIterator[bytes]:
        """Every key matching `match`, primary after primary (SCAN; may repeat a key)."""
        ...

    async def ping(self) -> bool:
        """True when every primary answers PING."""
        ...

    async def close(self) -> None:
        """Disconnect every connection."""
        ...


# --- one server ----------------------------------------------------------------------------


class _Node:
    """One server: a connection pool and the exchange of one packed command on it."""

    __slots__ = ("host", "name", "pool", "port")

    def __init__(self, name: str, pool: ConnectionPool, host: str = "", port: int = 0) -> None:
        self.name = name
        self.pool = pool
        self.host = host
        self.port = port

    async def call(
        self, chunks: list[bytes], script: LuaScript | None, stats: ClientStats, asking: bool
    ) -> Any:
        """Send the command and read its reply; a lacking script is loaded and the call resent."""
        try:
            conn: AbstractConnection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        except _NOT_TRANSIENT:
            raise
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise _transient(exc, self.name) from exc
        try:
            reply = await _exchange(conn, chunks, asking)
            if script is not None and isinstance(reply, NoScriptError):
                # A restarted, flushed or just promoted server: load it here, send again.
                loaded = await _exchange(conn, _pack(("SCRIPT", "LOAD", script.source)), False)
                if isinstance(loaded, ResponseError):
                    raise script_error(script, loaded)
                stats.script_loads += 1
                reply = await _exchange(conn, chunks, asking)
        except _NOT_TRANSIENT:
            raise
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise _transient(exc, self.name) from exc
        finally:
            await self.pool.release(conn)
        if isinstance(reply, ResponseError):
            raise _reply_error(reply, script, self.name)
        return reply


async def _exchange(conn: AbstractConnection, chunks: list[bytes], asking: bool) -> Any:
    """Send and read one command (after ASKING on the same connection when `asking`)."""
    try:
        if asking:
            # ASKING holds for the next command of this connection only, so both go together.
            await conn.send_packed_command([_ASKING, *chunks])
            first = await _read(conn)
            reply = await _read(conn)
            return first if isinstance(first, ResponseError) else reply
        await conn.send_packed_command(chunks)
        return await _read(conn)
    except BaseException:
        # redis-py disconnects on I/O errors and cancellation, not on parsed errors such as
        # NOAUTH: a reply still unread must never reach the next call of this connection.
        await conn.disconnect(nowait=True)
        raise


async def _read(conn: AbstractConnection) -> Any:
    try:
        return await conn.read_response()
    except ResponseError as exc:
        return exc


def _transient(exc: Exception, node: str) -> TransientRedisError:
    reason: Literal["timeout", "connection"] = (
        "timeout" if isinstance(exc, RedisTimeoutError) else "connection"
    )
    return TransientRedisError(reason, node, str(exc) or type(exc).__name__)


def _reply_error(reply: ResponseError, script: LuaScript | None, node: str) -> Exception:
    if isinstance(reply, AskError):  # MOVED too: the cluster client follows them
        return reply
    if isinstance(reply, TryAgainError):
        return TransientRedisError("tryagain", node, str(reply))
    if isinstance(reply, ClusterDownError):  # MASTERDOWN too
        return TransientRedisError("clusterdown", node, str(reply))
    if script is not None:
        return _located(script, reply)
    return reply


class SingleNodeClient:
    """A client of one Redis server (redis://, rediss:// or unix://)."""

    cluster = False

    def __init__(self, pool: ConnectionPool, name: str) -> None:
        self._node = _Node(name, pool)
        self._stats = ClientStats()

    @property
    def stats(self) -> ClientStats:
        """Script loads so far (a single server never redirects)."""
        return self._stats

    async def run_packed(self, packed: PackedCall, *tail_args: Arg) -> Any:
        """Send a packed script call, `tail_args` appended to its ARGV; the raw reply."""
        return await self._call(_frame(packed, tail_args), packed.script)

    async def run_script(self, script: LuaScript, keys: Sequence[Key], args: Sequence[Arg]) -> Any:
        """Pack and send one script call."""
        return await self.run_packed(pack_script_call(script, keys, args))

    async def load_script(self, script: LuaScript) -> None:
        """SCRIPT LOAD on the server; a Lua syntax error raises ScriptError."""
        try:
            await self._call(_pack(("SCRIPT", "LOAD", script.source)), None)
        except ResponseError as exc:
            raise script_error(script, exc) from None

    async def execute(self, *args: Arg, key: Key) -> Any:
        """One command; `key` is not needed to route it here, but kept for the cluster's sake."""
        return await self._call(_pack(args), None)

    async def execute_on_primaries(self, *args: Arg) -> dict[str, Any]:
        """One command on the server: {its name: reply}."""
        return {self._node.name: await self._call(_pack(args), None)}

    async def scan_iter(self, match: str | None = None, count: int = 1000) -> AsyncIterator[bytes]:
        """Every key matching `match` (SCAN; may repeat a key)."""
        async for key in _scan(self._node, self._stats, match, count):
            yield key

    async def ping(self) -> bool:
        """True when the server answers PING."""
        try:
            return bool(await self._call(_pack(("PING",)), None))
        except TransientRedisError:
            return False

    async def close(self) -> None:
        """Disconnect every connection."""
        await self._node.pool.disconnect()

    async def _call(self, chunks: list[bytes], script: LuaScript | None) -> Any:
        try:
            return await self._node.call(chunks, script, self._stats, asking=False)
        except AskError as exc:
            kind = "MOVED" if isinstance(exc, MovedError) else "ASK"
            raise ConfigError(
                f"Redis at {self._node.name} answered {kind} for slot {exc.slot_id}: it is a "
                "Redis Cluster node; set redis_cluster to auto or true"
            ) from None


async def _scan(
    node: _Node, stats: ClientStats, match: str | None, count: int
) -> AsyncIterator[bytes]:
    cursor: bytes | int = 0
    options: tuple[Arg, ...] = (
        ("COUNT", count) if match is None else ("MATCH", match, "COUNT", count)
    )
    while True:
        cursor, keys = await node.call(_pack(("SCAN", cursor, *options)), None, stats, False)
        for key in keys:
            yield key
        if cursor in (b"0", 0):
            return


# --- a cluster -----------------------------------------------------------------------------


class ClusterClient:
    """A Redis Cluster client: each call goes to the primary of its slot.

    The slot map comes from CLUSTER SLOTS, asked of the known nodes in turn. MOVED updates
    the slot and resends to the node it names (the full map is refreshed before the next
    call); ASK resends once to the node it names, after ASKING on the same connection. A
    connection error or CLUSTERDOWN marks the map stale, and the error surfaces as a
    TransientRedisError: the caller retries, and its next call asks the cluster again where
    the slot lives (after a failover, the promoted replica).
    """

    cluster = True

    def __init__(
        self,
        seeds: Sequence[tuple[str, ConnectionPool]],
        *,
        max_redirects: int = MAX_REDIRECTS,
        refresh_timeout_s: float = REFRESH_TIMEOUT_S,
    ) -> None:
        # Seeds: (host:port, pool) of the nodes the URL names; the first one's connection
        # settings (credentials, TLS) are used for every node found from them.
        self._template = seeds[0][1]
        self._seeds = tuple(
            _Node(name, pool, str(pool.connection_kwargs.get("host", "")),
                  int(pool.connection_kwargs.get("port", 0)))
            for name, pool in seeds
        )  # fmt: skip
        self._nodes: dict[str, _Node] = {}
        self._slots: list[_Node | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._primaries: tuple[_Node, ...] = ()
        self._stale = True
        self._stale_marks = 0  # how often the map was found stale; a refresh clears older marks
        self._epoch = 0
        self._lock = asyncio.Lock()
        self._prefer: _Node | None = None
        self._suspect: str | None = None
        self._max_redirects = max_redirects
        self._refresh_timeout_s = refresh_timeout_s
        self._stats = ClientStats()

    @property
    def stats(self) -> ClientStats:
        """Redirects, script loads and topology refreshes so far."""
        return self._stats

    @property
    def primaries(self) -> tuple[str, ...]:
        """host:port of each primary in the current slot map."""
        return tuple(node.name for node in self._primaries)

    def node_of(self, key: Key) -> str | None:
        """host:port of the primary owning `key`'s slot in the current map (None: uncovered)."""
        node = self._slots[key_slot(_bytes(key))]
        return node.name if node else None

    async def run_packed(self, packed: PackedCall, *tail_args: Arg) -> Any:
        """Send a packed script call to its slot's primary, `tail_args` appended to its ARGV."""
        return await self._call(packed.slot, _frame(packed, tail_args), packed.script)

    async def run_script(self, script: LuaScript, keys: Sequence[Key], args: Sequence[Arg]) -> Any:
        """Pack and send one script call."""
        return await self.run_packed(pack_script_call(script, keys, args))

    async def load_script(self, script: LuaScript) -> None:
        """SCRIPT LOAD on every primary; a Lua syntax error raises ScriptError."""
        try:
            await self.execute_on_primaries("SCRIPT", "LOAD", script.source)
        except ResponseError as exc:
            raise script_error(script, exc) from None

    async def execute(self, *args: Arg, key: Key) -> Any:
        """One command on the primary owning `key`'s slot (every key of it in that slot)."""
        return await self._call(key_slot(_bytes(key)), _pack(args), None)

    async def execute_on_primaries(self, *args: Arg) -> dict[str, Any]:
        """One command on every primary of the current map: node name -> reply."""
        replies: dict[str, Any] = {}
        for node in await self._current_primaries():
            try:
                replies[node.name] = await node.call(_pack(args), None, self._stats, False)
            except TransientRedisError:
                self._mark_stale()
                raise
        return replies

    async def scan_iter(self, match: str | None = None, count: int = 1000) -> AsyncIterator[bytes]:
        """Every key matching `match`, primary after primary (a key may repeat, or be missed
        if its slot moves during the scan)."""
        for node in await self._current_primaries():
            async for key in _scan(node, self._stats, match, count):
                yield key

    async def ping(self) -> bool:
        """True when every primary of the slot map answers PING."""
        try:
            await self.execute_on_primaries("PING")
        except TransientRedisError:
            return False
        return True

    async def close(self) -> None:
        """Disconnect every connection to every node."""
        pools = {id(n.pool): n.pool for n in (*self._seeds, *self._nodes.values())}
        for pool in pools.values():
            await pool.disconnect()

    async def refresh(self) -> None:
        """Ask the cluster for its slot map (CLUSTER SLOTS), node after node until one answers.

        Concurrent callers share one refresh. Raises TransientRedisError("topology") when no
        known node answers.
        """
        epoch = self._epoch
        async with self._lock:
            if self._epoch != epoch:
                return  # another task refreshed the map while this one waited
            marks = self._stale_marks
            best: tuple[list[_Node | None], int] | None = None
            failures: list[str] = []
            for node in self._candidates():
                try:
                    async with asyncio.timeout(self._refresh_timeout_s):
                        rows = await node.call([_CLUSTER_SLOTS], None, self._stats, False)
                except (TransientRedisError, TimeoutError) as exc:
                    failures.append(f"{node.name}: {exc or type(exc).__name__}")
                    continue
                except ResponseError as exc:
                    raise ConfigError(
                        f"Redis at {node.name} is not a cluster node (CLUSTER SLOTS: {exc}); "
                        "set redis_cluster to auto or false"
                    ) from None
                table = self._table(rows, node)
                covered = sum(entry is not None for entry in table)
                if best is None or covered > best[1]:
                    best = (table, covered)
                if covered == REDIS_CLUSTER_HASH_SLOTS:
                    break
            if best is None:
                raise TransientRedisError(
                    "topology", None, "no node answered CLUSTER SLOTS: " + "; ".join(failures)
                )
            self._install(best[0])
            # Staleness found while CLUSTER SLOTS was on its way may postdate its answer.
            self._stale = self._stale_marks != marks

    def _candidates(self) -> list[_Node]:
        # The node a redirect named first (it knows the new owner), then the primaries, the
        # seeds, and every node ever seen (a replica, or a former primary back up); the node
        # whose connection failed last goes last.
        ordered: dict[str, _Node] = {}
        for node in (self._prefer, *self._primaries, *self._seeds, *self._nodes.values()):
            if node is not None:
                ordered.setdefault(node.name, node)
        suspect = ordered.pop(self._suspect, None) if self._suspect else None
        return [*ordered.values(), *([suspect] if suspect else [])]

    def _table(self, rows: Any, answered_by: _Node) -> list[_Node | None]:
        table: list[_Node | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        for row in rows:
            start, end, primary = int(row[0]), int(row[1]), row[2]
            # An empty host means "the address you reached me at".
            host = _text(primary[0]) or answered_by.host
            node = self._node_at(host, int(primary[1]))
            table[start : end + 1] = [node] * (end - start + 1)
        return table

    def _install(self, table: list[_Node | None]) -> None:
        before = set(self._primaries)
        self._slots = table
        unique: dict[str, _Node] = {}
        for node in table:
            if node is not None:
                unique.setdefault(node.name, node)
        self._primaries = tuple(unique.values())
        self._prefer = None
        self._epoch += 1
        self._stats.refreshes += 1
        gone = before - set(self._primaries)
        if gone:
            log.info("redis cluster: no longer primaries: %s", ", ".join(n.name for n in gone))

    def _mark_stale(self) -> None:
        self._stale = True
        self._stale_marks += 1

    def _node_at(self, host: str, port: int) -> _Node:
        name = _host_port(host, port)
        node = self._nodes.get(name)
        if node is None:
            seed = next((n for n in self._seeds if n.name == name), None)
            if seed is not None:
                node = seed
            else:
                kwargs = {**self._template.connection_kwargs, "host": host, "port": port}
                pool = ConnectionPool(connection_class=self._template.connection_class, **kwargs)
                node = _Node(name, pool, host, port)
            self._nodes[name] = node
        return node

    async def _current_primaries(self) -> tuple[_Node, ...]:
        if self._stale:
            await self.refresh()
        return self._primaries

    async def _owner(self, slot: int | None) -> _Node:
        if self._stale:
            await self.refresh()
        if slot is None:
            if not self._primaries:
                raise TransientRedisError("topology", None, "the slot map has no primary")
            return self._primaries[0]
        node = self._slots[slot]
        if node is None:
            self._mark_stale()
            raise TransientRedisError("topology", None, f"slot {slot} is served by no node")
        return node

    async def _call(self, slot: int | None, chunks: list[bytes], script: LuaScript | None) -> Any:
        node = await self._owner(slot)
        asking = False
        for _ in range(self._max_redirects + 1):
            try:
                return await node.call(chunks, script, self._stats, asking)
            except MovedError as exc:
                # The slot has a new owner for good (migration done, or a failover).
                self._stats.moved += 1
                node = self._redirect_target(exc, node)
                self._slots[exc.slot_id] = node
                self._prefer = node
                self._mark_stale()
                asking = False
            except AskError as exc:
                # The slot is migrating and the keys are on the target already: this call only.
                self._stats.asked += 1
                node = self._redirect_target(exc, node)
                asking = True
            except TransientRedisError:
                self._mark_stale()
                self._suspect = node.name
                raise
        raise TransientRedisError(
            "redirects", node.name, f"more than {self._max_redirects} redirects for slot {slot}"
        )

    def _redirect_target(self, exc: AskError, source: _Node) -> _Node:
        return self._node_at(str(exc.host) or source.host, int(exc.port))


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- opening a client ----------------------------------------------------------------------


def cluster_choice(setting: ClusterSetting) -> bool | None:
    """The `cluster` argument of open_client for a `redis_cluster` setting (auto -> None)."""
    return {"auto": None, "true": True, "false": False}[setting]


async def open_client(
    url: str,
    *,
    cluster: bool | None = None,
    ssl_ca_certs: str | None = None,
    socket_timeout: float | None = None,
    socket_connect_timeout: float = 5.0,
    health_check_interval: int = 10,
    max_redirects: int = MAX_REDIRECTS,
) -> RedisClient:
    """A client for a redis://, rediss:// or unix:// URL (password in the URL).

    `cluster` None asks the server once (INFO cluster); True needs cluster nodes. A cluster URL
    may name several nodes, `redis://:pw@h1:6379,h2:6379`, so that the client starts while one
    is down; the others are found from them. No socket timeout by default: bound the calls
    with asyncio.timeout (see the module docstring). redis-py's own retries are off: a failed
    call raises TransientRedisError at once, and the caller decides when to retry.
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "health_check_interval": health_check_interval,
        "retry": Retry(NoBackoff(), 0),
    }
    if ssl_ca_certs:
        kwargs["ssl_ca_certs"] = ssl_ca_certs
    seeds = [(_endpoint(u), ConnectionPool.from_url(u, **kwargs)) for u in _seed_urls(url)]
    try:
        if cluster is None:
            cluster = await _is_cluster(seeds)
        if not cluster:
            if len(seeds) > 1:
                raise ConfigError("a redis_url with several hosts is for Redis Cluster only")
            name, pool = seeds[0]
            return SingleNodeClient(pool, name)
        if urlsplit(url).scheme == "unix":
            raise ConfigError("Redis Cluster needs a redis:// or rediss:// URL, not unix://")
        if int(seeds[0][1].connection_kwargs.get("db") or 0) != 0:
            raise ConfigError("Redis Cluster has database 0 only; drop the /<db> from the URL")
        client = ClusterClient(seeds, max_redirects=max_redirects)
        await client.refresh()
    except BaseException:
        for _, pool in seeds:
            await pool.disconnect()
        raise
    return client


async def _is_cluster(seeds: list[tuple[str, ConnectionPool]]) -> bool:
    # The first host that answers decides.
    failures = []
    for name, pool in seeds:
        try:
            info = await _Node(name, pool).call(
                _pack(("INFO", "cluster")), None, ClientStats(), False
            )
        except TransientRedisError as exc:
            failures.append(str(exc))
            continue
        return b"cluster_enabled:1" in _bytes(info)
    raise TransientRedisError("connection", None, "no host answered: " + "; ".join(failures))


def _seed_urls(url: str) -> list[str]:
    # redis://user:pw@h1:1,h2:2/0 -> redis://user:pw@h1:1/0, redis://user:pw@h2:2/0
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return [url]
    userinfo, at, hosts = parts.netloc.rpartition("@")
    return [
        urlunsplit(parts._replace(netloc=f"{userinfo}{at}{h.strip()}")) for h in hosts.split(",")
    ]


async def open_settings_client(settings: Settings) -> RedisClient:
    """The client `settings` describe (redis_url, redis_ssl_ca_certs, redis_cluster)."""
    ca_certs = settings.redis_ssl_ca_certs
    return await open_client(
        settings.redis_url.get_secret_value(),
        cluster=cluster_choice(settings.redis_cluster),
        ssl_ca_certs=str(ca_certs) if ca_certs else None,
    )


def _endpoint(url: str) -> str:
    # The URL's host:port (or socket path), never its password.
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return _host_port(parts.hostname or "localhost", parts.port or 6379)
