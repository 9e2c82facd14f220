"""One benchmark session: the servers, the children, per-run settings and topics, the results."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks.children import REPO_ROOT, Child
from benchmarks.memory import WorkloadMemory
from benchmarks.procstat import code_version, machine_info
from benchmarks.simple_reference import Expected
from benchmarks.workload import Job, Message
from streamscore import dev
from streamscore.config import Settings, load_settings

RULES_FILE = REPO_ROOT / "examples" / "rules.yaml"
SIMPLE_RULES_FILE = REPO_ROOT / "benchmarks" / "simple_rules.yaml"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
WINDOW_MS = 30 * 86_400_000

#: Settings field and topic suffix of each input topic, in Settings.input_topics order.
INPUT_TOPICS = (
    ("topic_page_views", "page-views"),
    ("topic_email_events", "email-events"),
    ("topic_downloads", "downloads"),
    ("topic_unsubscribes", "unsubscribes"),
    ("topic_profiles", "profiles"),
)
OUTPUT_TOPICS = (
    ("topic_handoffs", "handoffs"),
    ("topic_tier_changes", "tier-changes"),
    ("topic_dead_letter", "dead-letter"),
)


def say(message: str) -> None:
    """Progress on stderr, so stdout holds the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class JobData:
    """A job's workload once produced: its topics, size and (simple job) the expected outcome."""

    job: Job
    inputs: tuple[str, ...]  # in Settings.input_topics order
    total: int
    expected: Expected | None = None
    expected_undecayed: Expected | None = None  # the simple job with penalties kept whole
    stage_sample: list[Message] = field(default_factory=list)

    @property
    def scored_topics(self) -> tuple[str, ...]:
        """The topics that carry the job's events (the simple job has no profiles)."""
        return self.inputs[:4] if self.job == "simple" else self.inputs


class Session:
    """The stack, the children and what they measured; every process stopped by PID at close."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.suffix = uuid.uuid4().hex[:8]
        self.log_dir = Path(tempfile.mkdtemp(prefix="streamscore-bench-"))
        self.stack = dev.DevStack(redis_binary=args.redis_binary)
        self.children: list[Child] = []
        self.results: dict[str, Any] = {
            "machine": machine_info(),
            "args": {
                k: str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v
                for k, v in vars(args).items()
            },
            "suffix": self.suffix,
            "code": code_version(REPO_ROOT),
        }
        self.jobs: dict[Job, JobData] = {}
        # MEMORY USAGE of the full job's leads after the first (a) run, for the memory phase.
        self.workload_memory: WorkloadMemory | None = None

    def start(self) -> None:
        """Start the broker and the Redis-protocol server."""
        say(f"logs and scratch files: {self.log_dir}")
        self.stack.start()
        assert self.stack.broker is not None and self.stack.valkey is not None
        say(f"broker pid {self.stack.broker.pid}, redis pid {self.stack.valkey.pid}")
        with self.redis_client() as client:
            server = client.info("server")
        self.results["redis_server"] = (
            f"{'Valkey' if 'valkey_version' in server else 'Redis'} "
            f"{server.get('valkey_version', server.get('redis_version'))} "
            f"({self.stack.valkey.binary})"
        )

    @property
    def server_pids(self) -> tuple[int, int]:
        """(Redis, broker) PIDs."""
        assert self.stack.broker is not None and self.stack.valkey is not None
        return self.stack.valkey.pid, self.stack.broker.pid

    def input_topics(self, job: Job) -> tuple[str, ...]:
        """A job's input topic names, in Settings.input_topics order."""
        return tuple(f"bench.{self.suffix}.{job}.{name}" for _, name in INPUT_TOPICS)

    def output_topics(self, run: str) -> dict[str, str]:
        """A run's own output topics, by Settings field."""
        return {f: f"bench.{self.suffix}.{run}.{name}" for f, name in OUTPUT_TOPICS}

    def settings(self, inputs: tuple[str, ...], run: str, **overrides: Any) -> Settings:
        """Settings of one run: the job's topics, its own outputs, key prefix, group, port."""
        values: dict[str, Any] = {
            "kafka_bootstrap": self.stack.kafka_bootstrap,
            "redis_url": self.stack.redis_url,
            **{f: t for (f, _), t in zip(INPUT_TOPICS, inputs, strict=True)},
            **self.output_topics(run),
            "topic_partitions": self.args.partitions,
            "rules_file": RULES_FILE,
            "redis_key_prefix": f"bench:{self.suffix}:{run}",
            "consumer_group": f"bench-{self.suffix}-{run}",
            "batch_max_events": self.args.batch,
            # The replay covers 30 days; the inactivity timer would only add noise to it.
            "decay_tick_s": 3600.0,
            "web_port": dev.free_port(),
            "log_level": "WARNING",
        }
        values.update(overrides)
        return load_settings(**values)

    def start_child(
        self, name: str, module: str, args: list[str], settings: Settings | None
    ) -> Child:
        """Start a child and remember it for the final cleanup."""
        child = Child(name, module, args, settings, self.log_dir)
        self.children.append(child)
        return child

    def redis_client(self) -> redis.Redis:
        """A synchronous client of the stack's Redis-protocol server."""
        return redis.Redis.from_url(self.stack.redis_url)

    def close(self) -> None:
        """Stop every child and server this session started, by PID."""
        for child in self.children:
            child.stop()
        self.stack.close()
        left = [c.pid for c in self.children if c.alive()] + list(dev.started_pids())
        if left:
            say(f"WARNING: processes still running: {left}")
        else:
            say("all processes stopped")
