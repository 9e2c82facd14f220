"""The development stack: embedded broker and Valkey by PID, DevStack, demo, and its state file."""

from streamscore.dev.process import (
    EmbeddedServer,
    ServerKind,
    die_with_parent,
    free_port,
    running_servers,
    started_pids,
    stop_all,
)
from streamscore.dev.servers import start_broker, start_valkey
from streamscore.dev.stack import DevStack

__all__ = [
    "DevStack",
    "EmbeddedServer",
    "ServerKind",
    "die_with_parent",
    "free_port",
    "running_servers",
    "start_broker",
    "start_valkey",
    "started_pids",
    "stop_all",
]
