"""The dev stack's state file: written private and without secrets, found while its process runs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamscore.config import ENV_PREFIX, Settings, load_settings
from streamscore.dev.state import (
    RUNTIME_DIR_ENV,
    SHARED_FIELDS,
    client_settings,
    remove_state,
    running_stack,
    state_dir,
    without_password,
    write_state,
)

PASSWORD = "s3cret-pw"


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $XDG_RUNTIME_DIR, and no STREAMSCORE_* setting from the outer environment."""
    for name in os.environ:
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(runtime))
    return runtime


def dev_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap": "127.0.0.1:19092",
        "redis_url": f"redis://:{PASSWORD}@127.0.0.1:16379/0",
        "redis_key_prefix": "dev:v1",
        "rules_file": Path("examples/rules.yaml"),
        "topic_handoffs": "dev.handoffs",
    }
    values.update(overrides)
    return load_settings(**values)


def write(**overrides: Any) -> Path:
    path = write_state(dev_settings(**overrides), "http://127.0.0.1:16066")
    assert path is not None
    return path


def test_the_state_is_private_and_holds_no_password(runtime_dir: Path) -> None:
    path = write()
    assert path.parent == runtime_dir / "streamscore" == state_dir()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert PASSWORD.encode() not in raw
    doc = orjson.loads(raw)
    assert doc["pid"] == os.getpid()
    assert set(doc["settings"]) == set(SHARED_FIELDS)
    assert doc["settings"]["redis_url"] == "redis://127.0.0.1:16379/0"
    assert doc["settings"]["rules_file"] == str(Path("examples/rules.yaml").resolve())


def test_a_running_stack_is_found_and_its_file_removed_on_exit() -> None:
    path = write()
    stack = running_stack()
    assert stack is not None
    assert (stack.pid, stack.path, stack.web_url) == (os.getpid(), path, "http://127.0.0.1:16066")
    remove_state(path)
    remove_state(path)  # idempotent
    assert running_stack() is None


def test_a_dead_or_reused_pid_is_ignored_and_its_file_removed(tmp_path: Path) -> None:
    path = write()
    doc = orjson.loads(path.read_bytes())
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    dead = path.with_name(f"dev-{exited.stdout.strip()}.json")
    dead.write_bytes(orjson.dumps({**doc, "pid": int(exited.stdout)}))
    # Our PID, but a different start time: the PID was reused after a killed stack.
    reused = path.with_name("dev-reused.json")
    reused.write_bytes(orjson.dumps({**doc, "process_start": doc["process_start"] + 1}))
    garbage = path.with_name("dev-garbage.json")
    garbage.write_bytes(b"{not json")
    stack = running_stack()
    assert stack is not None and stack.path == path
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_the_newest_of_two_running_stacks_wins() -> None:
    path = write()
    doc = orjson.loads(path.read_bytes())
    newer = path.with_name("dev-newer.json")
    newer.write_bytes(orjson.dumps({**doc, "started_at_s": doc["started_at_s"] + 1}))
    stack = running_stack()
    assert stack is not None and stack.path == newer


def test_client_settings_take_from_the_stack_only_what_the_user_left_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert client_settings().stack is None  # nothing running: plain settings
    write()
    found = client_settings()
    assert found.stack is not None and found.stack.pid == os.getpid()
    assert found.from_stack == frozenset(SHARED_FIELDS)
    assert found.settings.redis_url.get_secret_value() == "redis://127.0.0.1:16379/0"
    assert found.settings.kafka_bootstrap == "127.0.0.1:19092"
    assert found.settings.redis_key_prefix == "dev:v1"
    assert found.settings.topic_handoffs == "dev.handoffs"
    assert found.settings.rules_file.is_absolute()

    monkeypatch.setenv(f"{ENV_PREFIX}REDIS_URL", "redis://10.0.0.5:6379/2")
    mine = client_settings()
    assert "redis_url" not in mine.from_stack
    assert mine.settings.redis_url.get_secret_value() == "redis://10.0.0.5:6379/2"
    assert mine.settings.kafka_bootstrap == "127.0.0.1:19092"


def test_a_directory_others_can_enter_is_neither_read_nor_written(runtime_dir: Path) -> None:
    write()
    (runtime_dir / "streamscore").chmod(0o755)
    assert running_stack() is None
    assert write_state(dev_settings(), "http://x") is None


@settings(max_examples=200, deadline=None, database=None)
@given(
    scheme=st.sampled_from(["redis", "rediss"]),
    user=st.sampled_from(["", "default", "app"]),
    password=st.text(min_size=1, max_size=20),
    port=st.integers(1, 65535),
    db=st.integers(0, 15),
    query_password=st.booleans(),
)
def test_without_password_drops_every_copy_and_keeps_the_rest(
    scheme: str, user: str, password: str, port: int, db: int, query_password: bool
) -> None:
    secret = quote(password, safe="")
    query = f"?password={secret}&socket_timeout=5" if query_password else ""
    url = f"{scheme}://{user}:{secret}@db.example:{port}/{db}{query}"
    cleaned = without_password(url)
    parts = urlsplit(cleaned)
    assert parts.password is None
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == (
        scheme,
        "db.example",
        port,
        f"/{db}",
    )
    assert (parts.username or "") == user
    assert ("socket_timeout=5" in parts.query) == query_password
    assert "password" not in parts.query


def test_without_password_leaves_a_url_without_one_alone() -> None:
    for url in ("redis://127.0.0.1:6379/0", "unix:///run/redis.sock?db=1", "redis://u@h:1/0"):
        assert without_password(url) == url
    assert (
        without_password("unix:///run/redis.sock?password=x&db=1") == "unix:///run/redis.sock?db=1"
    )
