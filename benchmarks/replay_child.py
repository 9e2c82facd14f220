"""Run (r)'s child: `streamscore replay` (runtime.replay.run_replay) of a job's topics.

It rescores the pre-produced input topics into the replay namespace `<prefix>:r:<name>` under
the rules file of its STREAMSCORE_* settings, sending its outputs to the replay's own topics
(`ss.v1.replay.<name>.*`), exactly as `streamscore replay --rules FILE --name NAME --outputs
topics` does, with the same garbage-collector settings. The settings come from the environment
only, never from a `streamscore dev` stack found on the machine (which the command would look
for). Once the replay has finished, it prints its result as one JSON line and waits for
SIGTERM, so that the benchmark measures it like any other run and stops it by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson

from streamscore.cli import tune_gc
from streamscore.config import load_settings
from streamscore.runtime.replay import ReplayRequest, run_replay


async def _replay(name: str) -> None:
    settings = load_settings()
    request = ReplayRequest(name=name, rules_file=settings.rules_file, emit=True)
    result = await run_replay(settings, request)
    line = {
        "namespace": result.namespace.prefix,
        "rules_version": result.rules_version,
        "records": result.records,
        "scored": result.scored,
        "skipped": result.skipped,
        "invalid": result.invalid,
        "seconds": result.seconds,
        "rate": result.rate,
    }
    print(orjson.dumps(line).decode(), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.replay_child --name NAME` (settings from STREAMSCORE_*)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", required=True, help="the replay's name (its namespace)")
    args = p.parse_args(argv)
    tune_gc()  # as `streamscore replay` (and `streamscore worker`) do
    asyncio.run(_replay(args.name))


if __name__ == "__main__":
    main()
