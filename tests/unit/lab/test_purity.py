"""The lab's core stays pure: no I/O framework, store, worker or clock; the CLI glue is apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import streamscore.lab
from tests.unit.test_architecture import clock_calls, imported_modules, is_forbidden

LAB_DIR = Path(streamscore.lab.__file__).parent
#: The CLI glue: commands.py reads the clock for the reports' and the log's time; sources.py
#: reads namespaces from Redis.
GLUE = frozenset({"commands.py", "sources.py"})
PURE = sorted(p for p in LAB_DIR.glob("*.py") if p.name not in GLUE)


def test_every_lab_module_is_checked() -> None:
    names = {p.name for p in PURE}
    assert {"ab.py", "stats.py", "diff.py", "learn.py", "export.py", "promote.py"} <= names


@pytest.mark.parametrize("path", PURE, ids=lambda p: p.name)
def test_lab_modules_import_no_io_framework_and_read_no_clock(path: Path) -> None:
    bad = [m for _, m in imported_modules(path, "streamscore.lab") if is_forbidden(m)]
    assert not bad
    assert not clock_calls(path)


def loaded_by(*modules: str) -> set[str]:
    """The modules a fresh interpreter has loaded after importing `modules`."""
    code = f"import sys\nimport {', '.join(modules)}\nprint('\\n'.join(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(result.stdout.split())


def test_importing_the_stdlib_core_loads_no_io_module() -> None:
    loaded = loaded_by(
        "streamscore.lab.ab",
        "streamscore.lab.stats",
        "streamscore.lab.diff",
        "streamscore.lab.files",
        "streamscore.lab.examples",
        "streamscore.lab.promote",
    )
    assert "streamscore.lab.diff" in loaded
    assert not {m for m in loaded if is_forbidden(m)} - {"time"}  # the stdlib may load `time`
    assert not {"sklearn", "numpy", "plotly"} & loaded


def test_importing_learn_and_report_loads_no_store_worker_or_server() -> None:
    """scikit-learn's joblib imports asyncio (it is never run); nothing of ours or Redis is."""
    loaded = loaded_by("streamscore.lab.learn", "streamscore.lab.export", "streamscore.lab.report")
    assert "streamscore.lab.learn" in loaded
    assert (
        not {m for m in loaded if is_forbidden(m)}
        - {"time"}
        - {m for m in loaded if m == "asyncio" or m.startswith("asyncio.")}
    )
    assert not {"redis", "faust", "prometheus_client", "aiokafka"} & loaded


def test_the_cli_loads_no_heavy_lab_dependency_until_a_lab_command_runs() -> None:
    code = (
        "import sys\nimport streamscore.cli\n"
        "print(' '.join(m for m in ('sklearn', 'numpy', 'plotly', 'scipy') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == []
