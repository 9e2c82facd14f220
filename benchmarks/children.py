"""Child processes of the benchmark: the worker and (b) take STREAMSCORE_* variables, (c) and
(q) their own command-line options."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.procstat import ProcSample, sample
from streamscore import dev
from streamscore.config import ENV_PREFIX, Settings, settings_env

REPO_ROOT = Path(__file__).resolve().parents[1]


class Child:
    """One Python child process (`python -m module args`), stopped by its PID."""

    def __init__(
        self,
        name: str,
        module: str,
        args: list[str],
        settings: Settings | None,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        if settings is not None:
            env.update(settings_env(settings))
        env.update(extra_env or {})
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # The child gets SIGKILL if the benchmark dies, so nothing is left behind.
            preexec_fn=dev.die_with_parent(os.getpid()),  # noqa: PLW1509 - one thread
        )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        """The child's PID."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.proc.poll() is None

    def sample(self) -> ProcSample | None:
        """CPU seconds and memory now."""
        return sample(self.pid)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of its output."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL if it overruns; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode
