"""`streamscore dev` as a user runs it: addresses, a handoff, clean logs, a stop that always stops
everything whenever the signal comes, and other commands that find the stack it runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from streamscore import dev
from tests.conftest import REPO_ROOT, run_cli

#: A stop on SIGINT or SIGTERM must end the process within this (the worker's SIGTERM budget).
STOP_WITHIN_S = 10.0


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            found |= {kid} | _children(kid)
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # exited, waiting for its reaper


def _catches(pid: int, signum: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signum - 1) & 1)


def _running_in(directory: Path) -> list[int]:
    """PIDs of live processes whose working directory is under `directory`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(directory)) and not _gone(int(proc.name)):
            found.append(int(proc.name))
    return found


class DevProcess:
    """A `streamscore dev` child with its output in a file; its servers' work dirs in tmp_path."""

    def __init__(self, tmp_path: Path, *args: str, ignore_sigint: bool = False, **env: str) -> None:
        self.log_path = tmp_path / "dev.log"
        self.tmp_dir = tmp_path / "tmp"
        self.tmp_dir.mkdir()
        # Its state file goes here, out of the way of a developer's own `streamscore dev`.
        self.runtime_dir = tmp_path / "run"
        self.runtime_dir.mkdir(mode=0o700)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
        parent = os.getpid()

        def setup() -> None:
            dev.die_with_parent(parent)()
            if ignore_sigint:
                # What a non-interactive shell does to a background job (`streamscore dev &`).
                signal.signal(signal.SIGINT, signal.SIG_IGN)

        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamscore.cli", "dev", *args],
                cwd=REPO_ROOT,
                # The servers' work dirs (their cwd) land here, so leftovers can be found.
                env={
                    **clean,
                    "TMPDIR": str(self.tmp_dir),
                    "XDG_RUNTIME_DIR": str(self.runtime_dir),
                    **env,
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=setup,  # noqa: PLW1509
            )
        self.started = time.monotonic()
        self.seen: set[int] = set()

    def text(self) -> str:
        """The output so far."""
        return self.log_path.read_text(errors="replace")

    def watch(self, seconds: float) -> None:
        """Record the children that appear during `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            self.seen |= _children(self.proc.pid)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    def wait_until_caught(self, signum: int, within_s: float = 30) -> None:
        """Wait until the process has a handler for `signum` (SigCgt in /proc/PID/status)."""
        deadline = time.monotonic() + within_s
        while not _catches(self.proc.pid, signum):
            assert self.proc.poll() is None, self.text()[-4000:]
            assert time.monotonic() < deadline, f"no handler for {signum} within {within_s} s"
            time.sleep(0.005)

    def wait_for(self, pattern: str, within_s: float = 90) -> re.Match[str]:
        """The first match of `pattern` in the output, waiting for it."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text(), re.M)
            if found:
                return found
            assert self.proc.poll() is None, self.text()[-4000:]
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {within_s} s:\n{self.text()[-4000:]}")

    def stop(self, stop_signal: int) -> tuple[int | None, float]:
        """Send `stop_signal`; the exit code (None: still running) and how long it took."""
        self.seen |= _children(self.proc.pid)
        sent = time.monotonic()
        self.proc.send_signal(stop_signal)
        deadline = sent + STOP_WITHIN_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            self.seen |= _children(self.proc.pid)
            time.sleep(0.02)
        return self.proc.poll(), time.monotonic() - sent

    def leftovers(self) -> list[int]:
        """Servers still running shortly after the exit, found by PID and by work dir."""
        deadline = time.monotonic() + 5
        while True:
            left = sorted({p for p in self.seen if not _gone(p)} | set(_running_in(self.tmp_dir)))
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def kill(self) -> None:
        """Kill the process and anything it left behind (the test has failed by then)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in {p for p in self.seen if not _gone(p)} | set(_running_in(self.tmp_dir)):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[Callable[..., DevProcess]]:
    """Start `streamscore dev ARGS` (at most once per test); killed at the end if still running."""
    started: list[DevProcess] = []

    def start(*args: str, ignore_sigint: bool = False, **env: str) -> DevProcess:
        process = DevProcess(tmp_path, *args, ignore_sigint=ignore_sigint, **env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def _ready(metrics_url: str) -> bool:
    try:
        with urllib.request.urlopen(metrics_url.replace("/metrics", "/readyz"), timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(process: DevProcess) -> str:
    """Wait until the worker of `process` is ready; its metrics URL."""
    metrics_url = process.wait_for(r"^metrics url: (http://\S+/metrics)$").group(1)
    deadline = time.monotonic() + 90
    while not _ready(metrics_url):
        assert time.monotonic() < deadline, process.text()[-4000:]
        assert process.proc.poll() is None, process.text()[-4000:]
        time.sleep(0.2)
    return metrics_url


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_dev_demo_shows_a_handoff_and_leaves_no_process(
    start_dev: Callable[..., DevProcess], stop_signal: signal.Signals
) -> None:
    process = start_dev("--demo", "--rate", "300")
    process.wait_for("HANDOFF")
    text = process.text()
    assert re.search(r"^kafka bootstrap: 127\.0\.0\.1:\d+$", text, re.M)
    assert re.search(r"^redis url: redis://127\.0\.0\.1:\d+/0$", text, re.M)
    metrics_url = process.wait_for(r"^metrics url: (http://\S+/metrics)$").group(1)
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        body = resp.read().decode()
    assert "streamscore_handoffs_total" in body
    # The console, open without a login on 127.0.0.1, lists the hot lead that was handed off.
    console_url = process.wait_for(r"^console url: (http://127\.0\.0\.1:\d+/) \(no login").group(1)
    with urllib.request.urlopen(console_url, timeout=10) as resp:
        queue = resp.read().decode()
    hot = queue.split('data-tier="hot"', 1)[1].split("</section>", 1)[0]
    assert "<tr data-lead-id=" in hot and "handed off" in hot
    process.watch(0)
    assert len(process.seen) >= 2, "expected the broker and Valkey as children"
    code, _ = process.stop(stop_signal)
    assert code == 0, process.text()[-4000:]
    assert not process.leftovers()


def test_the_demo_crm_answers_handoffs_and_report_draws_them(
    start_dev: Callable[..., DevProcess], tmp_path: Path
) -> None:
    """`streamscore dev --demo`, then `streamscore report` alone: it finds the stack."""
    process = start_dev("--demo", "--rate", "400")
    metrics_url = process.wait_for(r"^metrics url: (http://\S+/metrics)$").group(1)
    _wait_ready(process)
    deadline = time.monotonic() + 90
    outcomes = 0.0
    while time.monotonic() < deadline and outcomes < 5:
        time.sleep(1)
        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            body = resp.read().decode()
        outcomes = sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith("streamscore_outcomes_total{") and 'result="applied"' in line
        )
    assert outcomes >= 5, process.text()[-3000:]
    report = run_cli(
        "report", "--out", str(tmp_path / "report.html"), cwd=tmp_path,
        XDG_RUNTIME_DIR=str(process.runtime_dir),
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    figures = json.loads((tmp_path / "report.json").read_text())
    (cohort, *_) = figures["cohorts"]
    assert cohort["model"] == "live" and cohort["total"]["handoffs"] >= 1
    assert cohort["total"]["touched"]["k"] >= 1
    assert (tmp_path / "report.html").stat().st_size > 100_000  # plotly.js inlined
    code, _ = process.stop(signal.SIGTERM)
    assert code == 0, process.text()[-4000:]
    assert not process.leftovers()


@pytest.mark.parametrize("log_level", ["INFO", "WARNING"])
def test_a_log_written_to_a_file_has_no_terminal_escape_codes(
    start_dev: Callable[..., DevProcess], log_level: str
) -> None:
    # At WARNING and above Faust's start-up spinner was on: it wrote cursor codes to stdout
    # whether or not it was a terminal.
    process = start_dev(STREAMSCORE_LOG_LEVEL=log_level)
    _wait_ready(process)
    code, _ = process.stop(signal.SIGTERM)
    assert code == 0, process.text()[-4000:]
    raw = process.log_path.read_bytes()
    assert b"kafka bootstrap: " in raw
    assert b"\x1b" not in raw and b"\b" not in raw, raw[:400]


@pytest.mark.parametrize("inherited", ["default", "ignored"])
@pytest.mark.parametrize("delay_s", [0.1, 0.3, 0.7, 1.2, 2.5])
def test_sigint_at_any_moment_of_start_up_stops_everything(
    start_dev: Callable[..., DevProcess], delay_s: float, inherited: str
) -> None:
    """SIGINT while the stack starts: a prompt, clean exit and no server left behind.

    `ignored` starts it as a non-interactive shell starts a background job (`streamscore dev &`):
    with SIGINT ignored, which Python keeps, so only Faust's own handler, installed a second or
    more into the start, would have seen the signal.
    """
    process = start_dev("--demo", ignore_sigint=inherited == "ignored")
    # The delay counts from the fork, but the signal waits at least until the CLI's first line
    # has run (its SIGTERM handler shows in /proc): before it, during the interpreter's own
    # start-up, nothing can act on a signal the parent set to ignored. It took 0.06 s unloaded.
    process.wait_until_caught(signal.SIGTERM)
    process.watch(delay_s - (time.monotonic() - process.started))
    code, _ = process.stop(signal.SIGINT)
    text = process.text()
    assert code is not None, f"still running {STOP_WITHIN_S} s after SIGINT:\n{text[-4000:]}"
    assert code == 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    assert not process.leftovers(), text[-4000:]


def test_lead_finds_the_running_dev_stack_and_says_what_to_set_once_it_is_gone(
    start_dev: Callable[..., DevProcess], tmp_path: Path
) -> None:
    process = start_dev("--demo", "--rate", "300")
    lead_id = process.wait_for(r"HANDOFF (\S+):").group(1)
    state_path = Path(process.wait_for(r"^state: (\S+) ").group(1))
    assert state_path.parent == process.runtime_dir / "streamscore"
    redis_url = process.wait_for(r"^redis url: (\S+)$").group(1)
    bootstrap = process.wait_for(r"^kafka bootstrap: (\S+)$").group(1)
    elsewhere = tmp_path / "elsewhere"  # not the repository: the rules file path must hold
    elsewhere.mkdir()

    found = run_cli("lead", lead_id, cwd=elsewhere, XDG_RUNTIME_DIR=str(process.runtime_dir))
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[0] == f"lead {lead_id}"
    assert re.search(r"^  tier \S+, grade [A-D]", found.stdout, re.M), found.stdout
    assert found.stderr == (
        f"streamscore: using `streamscore dev` (PID {process.proc.pid}, "
        f"redis {redis_url}, kafka {bootstrap})\n"
    )

    code, _ = process.stop(signal.SIGINT)
    assert code == 0, process.text()[-4000:]
    assert not state_path.exists()
    gone = run_cli(
        "lead",
        lead_id,
        cwd=elsewhere,
        XDG_RUNTIME_DIR=str(process.runtime_dir),
        STREAMSCORE_REDIS_URL=redis_url,
    )
    assert gone.returncode == 1
    assert gone.stdout == ""
    assert len(gone.stderr.splitlines()) == 1, gone.stderr
    assert gone.stderr.startswith(f"streamscore: cannot reach Redis at {redis_url} ")
    assert "STREAMSCORE_REDIS_URL" in gone.stderr


def test_a_wrong_redis_password_is_one_line_after_one_attempt(tmp_path: Path) -> None:
    valkey = dev.start_valkey(password="right-password")
    try:
        admin = redis.Redis(host=valkey.host, port=valkey.port, password="right-password")
        before = admin.info("stats")["acl_access_denied_auth"]
        wrong = f"redis://:wrong-password@{valkey.address}/0"
        result = run_cli(
            "lead",
            "lead-1",
            cwd=tmp_path,
            XDG_RUNTIME_DIR=str(tmp_path),
            STREAMSCORE_REDIS_URL=wrong,
        )
        denied = admin.info("stats")["acl_access_denied_auth"] - before
        admin.close()
    finally:
        valkey.stop()
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "authentication failed" in result.stderr
    assert "STREAMSCORE_REDIS_URL" in result.stderr
    assert "wrong-password" not in result.stderr
    assert denied == 1, "the CLI retried a refused password"
