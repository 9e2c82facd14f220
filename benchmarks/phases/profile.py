"""Phase: profile (a)'s hot path (cProfile in-process, then py-spy on a real worker) when it
misses the issue's targets on the simple job, or when asked."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from benchmarks.phases.throughput import EXACT_REPLAY
from benchmarks.session import SIMPLE_RULES_FILE, JobData, Session, say
from streamscore.store.keys import KeySpace

PYSPY_S = 10
PYSPY_RATE = 250


def _overrides(data: JobData) -> dict[str, Any]:
    """(a)'s settings for the job: the simple job runs its own rules with an exact merge."""
    if data.job == "simple":
        return {"rules_file": SIMPLE_RULES_FILE, **EXACT_REPLAY}
    return {}


def missed_targets(session: Session) -> bool:
    """Whether (a) missed a/q >= 2 or a/c >= 0.5 on the simple job."""
    ratios = session.results.get("throughput", {}).get("simple", {}).get("ratios", {})
    a_q, a_c = ratios.get("a_over_q"), ratios.get("a_over_c")
    return (a_q is not None and a_q < 2) or (a_c is not None and a_c < 0.5)


def run_profile(session: Session, data: JobData) -> None:
    """cProfile of ScoringWorker over `data`'s topics, then py-spy of a worker subprocess."""
    args = session.args
    if args.profile == "never" or (args.profile == "auto" and not missed_targets(session)):
        return
    say(f"profile: ScoringWorker.run under cProfile over the {data.job} job's topics")
    settings = session.settings(data.inputs, f"{data.job}-prof", **_overrides(data))
    out = session.log_dir / "profile"
    seconds = 20.0 if not args.quick else 10.0
    child = session.start_child(
        "profile",
        "benchmarks.profile_worker",
        [str(out), str(seconds), str(data.total)],
        settings,
    )
    try:
        child.proc.wait(seconds + 120)
    finally:
        child.stop()
    summary_path = out.with_suffix(".json")
    if not summary_path.exists():
        session.results["profile"] = {"error": child.log_tail()}
        return
    summary = orjson.loads(summary_path.read_bytes())
    summary["text_path"] = str(out.with_suffix(".txt"))
    summary["job"] = data.job
    session.results["profile"] = summary
    _pyspy(session, data)


def _pyspy(session: Session, data: JobData) -> None:
    """Sample the real worker subprocess with py-spy, if installed (low overhead)."""
    pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if pyspy is None:
        return
    settings = session.settings(data.inputs, f"{data.job}-pyspy", **_overrides(data))
    worker = session.start_child("pyspy-worker", "streamscore.cli", ["worker"], settings)
    client = session.redis_client()
    out = session.log_dir / "pyspy.txt"
    try:
        keys = KeySpace(settings.redis_key_prefix)
        deadline = time.monotonic() + 90
        while not client.hgetall(keys.offsets(0)) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = subprocess.run(
            [pyspy, "record", "--pid", str(worker.pid), "--duration", str(PYSPY_S),
             "--rate", str(PYSPY_RATE),
             "--format", "raw", "--output", str(out), "--nonblocking"],
            capture_output=True,
            timeout=60,
            check=False,
        )  # fmt: skip
    finally:
        client.close()
        worker.stop()
    if proc.returncode != 0 or not out.exists():
        session.results["pyspy"] = {"error": proc.stderr.decode(errors="replace")[-2000:]}
        return
    session.results["pyspy"] = summarize_pyspy(out, PYSPY_S * PYSPY_RATE)


def summarize_pyspy(path: Path, expected_samples: float) -> dict[str, Any]:
    """Leaf (self) and inclusive shares per function from py-spy's raw collapsed stacks.

    py-spy (without --idle) only keeps samples where a thread was running, so the sample count
    over the expected count is the share of wall time the worker spent on CPU in Python.
    """
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first entry names the process
        if not frames:
            continue
        leaf[frames[-1]] += count
        for f in set(frames):
            if "streamscore/" in f or "benchmarks/" in f:
                inclusive[f] += count
    return {
        "samples": total,
        "active_share": total / expected_samples if expected_samples else 0.0,
        "top_self": [{"function": f, "share": n / total} for f, n in leaf.most_common(25)],
        "top_inclusive": [
            {"function": f, "share": n / total} for f, n in inclusive.most_common(25)
        ],
        "raw_path": str(path),
        "rate": PYSPY_RATE,
        "seconds": PYSPY_S,
    }


def _frame(frame: str) -> str:
    name, _, location = frame.partition(" (")
    location = location.rstrip(")").rpartition(":")[0] or location.rstrip(")")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in location:
            location = location.split(marker, 1)[1]
            break
    return f"{name} ({location})"
