"""The outcome core (events, funnel, kpi) stays pure: no I/O framework, store, worker or clock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import streamscore.outcomes
from tests.unit.test_architecture import clock_calls, imported_modules, is_forbidden

PURE = [
    Path(streamscore.outcomes.__file__).parent / name
    for name in ("__init__.py", "events.py", "funnel.py", "kpi.py")
]


@pytest.mark.parametrize("path", PURE, ids=lambda p: p.name)
def test_pure_modules_import_no_io(path: Path) -> None:
    bad = [m for _, m in imported_modules(path, "streamscore.outcomes") if is_forbidden(m)]
    assert not bad
    assert not clock_calls(path)


def test_importing_the_core_loads_no_io_module() -> None:
    code = (
        "import sys\n"
        "import streamscore.outcomes.funnel, streamscore.outcomes.kpi\n"
        "import streamscore.outcomes.events\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(result.stdout.split())
    assert "streamscore.outcomes.funnel" in loaded
    assert not {m for m in loaded if is_forbidden(m)} - {"time"}  # the stdlib may load `time`
    assert not {"asyncio", "redis", "faust", "prometheus_client", "plotly"} & loaded
