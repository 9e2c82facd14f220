"""`streamscore dev --demo` prints its addresses, shows a handoff, and stops all it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from streamscore import dev
from tests.conftest import REPO_ROOT


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


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_dev_demo_shows_a_handoff_and_leaves_no_process(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    log_path = tmp_path / "dev.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamscore.cli", "dev", "--demo", "--rate", "300"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=dev.die_with_parent(os.getpid()),  # noqa: PLW1509
        )
        try:
            deadline = time.monotonic() + 90
            text = ""
            while time.monotonic() < deadline and "HANDOFF" not in text:
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.5)
                text = log_path.read_text(errors="replace")
            assert "HANDOFF" in text, text[-4000:]
            assert re.search(r"^kafka bootstrap: 127\.0\.0\.1:\d+$", text, re.M)
            assert re.search(r"^redis url: redis://127\.0\.0\.1:\d+/0$", text, re.M)
            metrics_url = re.search(r"^metrics url: (http://\S+/metrics)$", text, re.M)
            assert metrics_url
            with urllib.request.urlopen(metrics_url.group(1), timeout=5) as resp:
                body = resp.read().decode()
            assert "streamscore_handoffs_total" in body
            children = _children(proc.pid)
            assert len(children) >= 2, "expected the broker and Valkey as children"
            proc.send_signal(stop_signal)
            assert proc.wait(15) == 0, log_path.read_text()[-4000:]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not all(_gone(p) for p in children):
                time.sleep(0.1)
            assert all(_gone(p) for p in children), f"left behind: {children}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
