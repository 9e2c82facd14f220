"""Where a running `streamscore dev` is: a state file it writes, and the lookup other commands use.

`streamscore dev` writes `dev-<pid>.json` (0600, in a 0700 directory: $XDG_RUNTIME_DIR/streamscore,
else <tmp>/streamscore-<uid>) with the settings that locate its data (broker, Redis, key prefix,
rules file, topics) and removes it on exit. A command that talks to a stack calls
`client_settings`: each of those settings the user has not set (STREAMSCORE_* variable or
settings file) comes from the newest live stack. Secrets are never written: a Redis URL loses
its password.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson

from streamscore.config import Settings, load_settings

logger = logging.getLogger(__name__)

RUNTIME_DIR_ENV: Final = "XDG_RUNTIME_DIR"

#: The settings a client needs to reach a dev stack's data; none of them is a secret once the
#: Redis URL has lost its password.
SHARED_FIELDS: Final = (
    "kafka_bootstrap",
    "redis_url",
    "redis_key_prefix",
    "redis_key_groups",
    "redis_forgotten_prefix",
    "rules_file",
    "consumer_group",
    *sorted(
        name
        for name, info in Settings.model_fields.items()
        if name.startswith("topic_") and info.annotation is str
    ),
)

_STATE_GLOB = "dev-*.json"
# Field 22 of /proc/<pid>/stat, counted after the ")" that ends the command name (field 2).
_START_TIME_INDEX = 22 - 3


@dataclass(frozen=True, slots=True)
class DevState:
    """What one running `streamscore dev` recorded about itself."""

    pid: int
    started_at_s: float
    web_url: str
    settings: Mapping[str, Any]
    path: Path
    process_start: int | None = None  # /proc start time in clock ticks, against PID reuse


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Settings for a command, and which of them came from a running dev stack."""

    settings: Settings
    stack: DevState | None = None
    from_stack: frozenset[str] = frozenset()


def state_dir() -> Path:
    """$XDG_RUNTIME_DIR/streamscore, else <tmp>/streamscore-<uid>."""
    runtime = os.environ.get(RUNTIME_DIR_ENV)
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "streamscore"
    return Path(tempfile.gettempdir()) / f"streamscore-{os.getuid()}"


def write_state(settings: Settings, web_url: str) -> Path | None:
    """Record this process as a running dev stack; the file written, None if it could not be."""
    directory = state_dir()
    if not _private_dir(directory, create=True):
        return None
    values: dict[str, Any] = {}
    for name in SHARED_FIELDS:
        value = getattr(settings, name)
        if name == "redis_url":
            value = without_password(value.get_secret_value())
        elif name == "rules_file":
            value = str(Path(value).resolve())
        values[name] = value
    pid = os.getpid()
    doc = {
        "pid": pid,
        "process_start": _process_start(pid),
        "started_at_s": time.time(),
        "web_url": web_url,
        "settings": values,
    }
    path = directory / f"dev-{pid}.json"
    # mkstemp creates the file 0600; the rename makes it appear whole or not at all.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".dev-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        logger.warning("cannot write the dev stack state file %s: %s", path, exc.strerror)
        return None
    return path


def remove_state(path: Path) -> None:
    """Remove a state file this process wrote; idempotent."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def running_stack() -> DevState | None:
    """The newest dev stack whose process still runs; state files of dead ones are removed."""
    directory = state_dir()
    if not _private_dir(directory, create=False):
        return None
    live = []
    for path in directory.glob(_STATE_GLOB):
        state = _read_state(path)
        if state is not None and _alive(state.pid, state.process_start):
            live.append(state)
        else:
            # A stack killed with SIGKILL cannot remove its file; an unreadable file is no use.
            with contextlib.suppress(OSError):
                path.unlink()
    return max(live, key=lambda s: (s.started_at_s, s.pid), default=None)


def client_settings(settings_file: Path | None = None) -> ClientSettings:
    """Settings from the environment and settings file; what they leave unset, from a dev stack."""
    settings = load_settings(settings_file)
    stack = running_stack()
    if stack is None:
        return ClientSettings(settings)
    unset = {
        name: value
        for name, value in stack.settings.items()
        if name in SHARED_FIELDS and name not in settings.model_fields_set
    }
    if not unset:
        return ClientSettings(settings)
    return ClientSettings(load_settings(settings_file, **unset), stack, frozenset(unset))


def without_password(url: str) -> str:
    """`url` with any password removed, from the authority or the query (username kept)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}@{host}" if user else host
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k != "password"]
    if netloc == parts.netloc and len(kept) == len(pairs):
        return url  # nothing to remove (and unix:///path keeps its slashes)
    query = f"?{urlencode(kept)}" if kept else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}{fragment}"


def _read_state(path: Path) -> DevState | None:
    try:
        doc = orjson.loads(path.read_bytes())
        state = DevState(
            pid=int(doc["pid"]),
            started_at_s=float(doc["started_at_s"]),
            web_url=str(doc["web_url"]),
            settings=dict(doc["settings"]),
            path=path,
            process_start=None if doc.get("process_start") is None else int(doc["process_start"]),
        )
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return state


def _alive(pid: int, recorded_start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False  # gone, or another user's process has taken the PID
    return recorded_start is None or _process_start(pid) == recorded_start


def _process_start(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot; None if gone, a zombie, or without /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[_START_TIME_INDEX])


def _private_dir(directory: Path, *, create: bool) -> bool:
    """Whether `directory` is ours alone (a 0700 directory we own, not a symlink)."""
    if create:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            logger.warning("cannot create %s: %s", directory, exc.strerror)
            return False
    try:
        info = directory.lstat()
    except FileNotFoundError:
        return False
    # In a shared temp dir another user could have made it first, to read or plant state.
    private = (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    )
    if not private:
        logger.warning("ignoring %s: not a directory of this user's alone (mode 0700)", directory)
    return private
