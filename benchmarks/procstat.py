"""Process CPU time and memory from /proc (Linux), and machine facts for the report."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """CPU seconds (user + system) and memory of one process at one instant."""

    cpu_s: float
    rss_mb: float
    peak_rss_mb: float


def sample(pid: int) -> ProcSample | None:
    """Read /proc/<pid>/stat and status; None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat.rpartition(")")[2].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
    values = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024.0
    return ProcSample(cpu_s, values.get("VmRSS", 0.0), values.get("VmHWM", 0.0))


def system_busy_s() -> float:
    """CPU seconds all CPUs have spent busy (not idle or waiting on I/O) since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(values) - values[3] - values[4]) / _TICKS_PER_S


def code_version(repo: Path) -> dict[str, str | bool]:
    """The commit, whether streamscore/ differs from it, and a hash of its current content."""
    digest = hashlib.sha256()
    package = repo / "streamscore"
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".lua", ".json") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(repo)).encode())
            digest.update(path.read_bytes())
    commit = _git(repo, "rev-parse", "HEAD")
    dirty = bool(_git(repo, "status", "--porcelain", "--", "streamscore", "schemas"))
    return {"commit": commit, "uncommitted_changes": dirty, "content_sha256": digest.hexdigest()}


def _git(repo: Path, *args: str) -> str:
    # Read-only queries; a missing git or repository only leaves the field empty.
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def machine_info() -> dict[str, str | int]:
    """nproc, CPU model, memory, Python and kernel versions."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory": mem_gb,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
    }
