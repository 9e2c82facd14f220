"""The rules in force: loaded at start, reloaded on SIGHUP or file change, kept when invalid."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from streamscore.errors import RulesError
from streamscore.runtime.sensors import Sensor
from streamscore.scoring.rules import CompiledRules, load_rules

log = logging.getLogger(__name__)


class RulesHolder:
    """Holds the compiled rules and what is derived from them, swapped together on reload."""

    def __init__(
        self, path: Path, sensor: Sensor, dedup_window_s: int, *, primary: bool = True
    ) -> None:
        self.path = path
        self._sensor = sensor
        # Only the live rules are reported as the version in force; other models' rules (A/B
        # arms, shadows) are reloaded the same way but report only their reloads.
        self._primary = primary
        self._dedup_window_ms = dedup_window_s * 1000
        self._mtime_ns = self._stat()
        self.rules = load_rules(path)  # fails fast at start: there is nothing to fall back on
        self._derive(self.rules)
        sensor.rules_loaded(self.rules.version, self.tier_rank, "initial", primary)

    def _stat(self) -> int:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return -1

    def _derive(self, rules: CompiledRules) -> None:
        self.script_config = orjson.dumps(
            {**rules.script_config(), "dedup_window_ms": self._dedup_window_ms}
        )
        self.tier_rank = {t.name: i for i, t in enumerate(rules.tiers)}

    def reload(self) -> bool:
        """Load the file again; on error keep the rules in force. True when new rules apply."""
        self._mtime_ns = self._stat()
        try:
            rules = load_rules(self.path)
        except RulesError as exc:
            self._sensor.rules_loaded(self.rules.version, self.tier_rank, "rejected", self._primary)
            log.error("rules reload rejected, keeping version %s: %s", self.rules.version, exc)
            return False
        old = self.rules.version
        self.rules = rules
        self._derive(rules)
        self._sensor.rules_loaded(rules.version, self.tier_rank, "applied", self._primary)
        log.warning("rules reloaded from %s: version %s -> %s", self.path, old, rules.version)
        return True

    def reload_if_changed(self) -> bool:
        """Reload when the file's modification time changed since the last load."""
        if self._stat() != self._mtime_ns:
            return self.reload()
        return False
