"""scoring/ stays pure: no I/O framework, no store or worker, and no clock."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import streamscore.scoring

SCORING_DIR = Path(streamscore.scoring.__file__).parent
SCORING_FILES = sorted(SCORING_DIR.rglob("*.py"))

#: Modules (and their submodules) that scoring must not import.
FORBIDDEN = (
    "asyncio",
    "redis",
    "faust",
    "mode",
    "aiokafka",
    "prometheus_client",
    "logging.handlers",
    "time",
    "streamscore.store",
    "streamscore.runtime",
    "streamscore.app",
    "streamscore.views",
    "streamscore.metrics",
)
#: Clock reads, as `<name>.<attribute>(...)` calls.
CLOCK_CALLS = {
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("time", "monotonic_ns"),
    ("time", "perf_counter"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
}


def package_of(path: Path) -> str:
    """The package a scoring file's relative imports are resolved against."""
    parts = path.relative_to(SCORING_DIR.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1])


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            # `from streamscore import store` imports streamscore.store
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return out


def is_forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def test_scoring_files_are_found() -> None:
    names = {p.name for p in SCORING_FILES}
    expected = {"rules.py", "engine.py", "reference.py", "state.py", "outputs.py", "explain.py"}
    assert expected <= names


@pytest.mark.parametrize("path", SCORING_FILES, ids=lambda p: p.name)
def test_scoring_imports_no_io_framework_store_or_worker(path: Path) -> None:
    found = imported_modules(path, package_of(path))
    bad = [f"{path.name}:{line}: import {m}" for line, m in found if is_forbidden(m)]
    assert not bad, "scoring/ must stay pure:\n" + "\n".join(bad)


def clock_calls(path: Path) -> list[str]:
    """`time.time()`, `datetime.now()`, `datetime.datetime.now()` ... calls in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
            if (name, node.func.attr) in CLOCK_CALLS:
                found.append(f"{path.name}:{node.lineno}: {name}.{node.func.attr}()")
    return found


@pytest.mark.parametrize("path", SCORING_FILES, ids=lambda p: p.name)
def test_scoring_never_reads_the_clock(path: Path) -> None:
    bad = clock_calls(path)
    assert not bad, "scoring/ takes `now` as a parameter:\n" + "\n".join(bad)


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """The helpers flag a bad module, so the passing tests above mean something."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import asyncio\nfrom ..store import keys\nfrom redis.asyncio import Redis\n"
        "from .. import runtime\nfrom .rules import load_rules\nimport timeit\n"
        "import datetime as dt\nfrom datetime import datetime\n"
        "a = datetime.now()\nb = dt.datetime.utcnow()\nc = time.time()\nd = dt.timedelta(1)\n",
        encoding="utf-8",
    )
    assert [c.split(": ")[1] for c in clock_calls(probe)] == [
        "datetime.now()",
        "datetime.utcnow()",
        "time.time()",
    ]
    found = {m for _, m in imported_modules(probe, "streamscore.scoring")}
    assert {"asyncio", "streamscore.store", "redis.asyncio", "streamscore.runtime"} <= found
    assert "streamscore.scoring.rules" in found
    assert sorted(m for m in found if is_forbidden(m)) == [
        "asyncio",
        "redis.asyncio",
        "redis.asyncio.Redis",
        "streamscore.runtime",
        "streamscore.store",
        "streamscore.store.keys",
    ]


def test_importing_scoring_loads_no_io_module() -> None:
    """Transitively too: a fresh interpreter that imports scoring has none of them loaded."""
    code = (
        "import sys\n"
        "import streamscore.scoring.rules, streamscore.scoring.engine\n"
        "import streamscore.scoring.reference, streamscore.scoring.durations\n"
        "import streamscore.scoring.state, streamscore.scoring.explain\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = result.stdout.split()
    assert "streamscore.scoring.reference" in loaded
    bad = sorted(m for m in loaded if is_forbidden(m) and m != "time")
    assert not bad, f"importing streamscore.scoring loads {bad}"
