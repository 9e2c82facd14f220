"""Phase: per-event cost of each hot-path stage of the full job, outside Kafka."""

from __future__ import annotations

from benchmarks.session import RULES_FILE, Session, say
from benchmarks.stages import commit_cost, python_stages
from benchmarks.workload import Message


def run_stages(session: Session, messages: list[Message]) -> None:
    """Python stages (best of 3), then commit.lua in Redis (best of 2)."""
    args = session.args
    say(f"stages: timing each stage over {len(messages):,} events")
    python = python_stages(messages, RULES_FILE, args.batch, args.partitions)
    redis_us = commit_cost(
        messages, session.stack.redis_url, f"bench:{session.suffix}:stages", RULES_FILE, args.batch
    )
    session.results["stages"] = {"events": len(messages), "python_us": python, "redis_us": redis_us}
