"""The rules in force: loaded at start, reloaded on SIGHUP or file change, kept when invalid."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from streamscore.errors import RulesError
from streamscore.metrics import Metrics
from streamscore.scoring.rules import CompiledRules, load_rules

log = logging.getLogger(__name__)


class RulesHolder:
    """Holds the compiled rules and the script config derived from them."""

    def __init__(self, path: Path, metrics: Metrics, dedup_window_s: int) -> None:
        self.path = path
        self._metrics = metrics
        self._dedup_window_ms = dedup_window_s * 1000
        self._mtime_ns = self._stat()
        self.rules = load_rules(path)  # fails fast at start: there is nothing to fall back on
        self.script_config = self._script_config(self.rules)
        self.tier_rank = {t.name: i for i, t in enumerate(self.rules.tiers)}
        metrics.rules_version_info.labels(version=self.rules.version).set(1)

    def _stat(self) -> int:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return -1

    def _script_config(self, rules: CompiledRules) -> bytes:
        return orjson.dumps({**rules.script_config(), "dedup_window_ms": self._dedup_window_ms})

    def reload(self) -> bool:
        """Load the file again; on error keep the rules in force. True when new rules apply."""
        self._mtime_ns = self._stat()
        try:
            rules = load_rules(self.path)
        except RulesError as exc:
            self._metrics.rules_reloads_total.labels(result="rejected").inc()
            log.error("rules reload rejected, keeping version %s: %s", self.rules.version, exc)
            return False
        old = self.rules.version
        self.rules = rules
        self.script_config = self._script_config(rules)
        self.tier_rank = {t.name: i for i, t in enumerate(rules.tiers)}
        self._metrics.rules_reloads_total.labels(result="applied").inc()
        self._metrics.rules_version_info.clear()
        self._metrics.rules_version_info.labels(version=rules.version).set(1)
        log.warning("rules reloaded from %s: version %s -> %s", self.path, old, rules.version)
        return True

    def reload_if_changed(self) -> bool:
        """Reload when the file's modification time changed since the last load."""
        if self._stat() != self._mtime_ns:
            return self.reload()
        return False
