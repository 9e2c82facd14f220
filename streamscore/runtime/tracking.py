"""Custom track events at intake: names no rule mentions are counted, then dropped or refused.

The collector sends every tracker event whose name has no type of its own to the track topic,
so its names are open-ended: a tracking plan grows without anyone touching streamscore. The
rules decide which names count (`event:` conditions); a name none of them accepts is counted
(the metric's label is the name when the rules name it literally, else `other`, so its
cardinality is bounded by the rules file) and then ignored or dead-lettered, as the setting
`track_unknown` says. Known names go on to scoring; nothing here can fail the worker.
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Literal

from streamscore.errors import InvalidEvent
from streamscore.events import Event
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.sensors import OTHER_TRACK_EVENT as OTHER
from streamscore.runtime.sensors import Sensor

#: Distinct names whose verdict is remembered per rules version (names repeat a lot).
_MEMO_MAX = 4096

TrackUnknown = Literal["ignore", "dead_letter"]


class TrackScreen:
    """Judges custom track events against the rules in force; tallies what it decided."""

    def __init__(self, topic: str, mode: TrackUnknown, rules: RulesHolder, sensor: Sensor) -> None:
        self.topic = topic
        self._mode = mode
        self._rules = rules
        self._sensor = sensor
        self._version: str | None = None
        self._named: frozenset[str] = frozenset()
        self._known: dict[str, bool] = {}
        self.tally: Tally[tuple[str, str]] = Tally()

    def _refresh(self) -> None:
        rules = self._rules.rules
        if rules.version != self._version:
            self._version = rules.version
            self._named = frozenset(rules.track_names)
            self._known = {}
            self._sensor.track_names(rules.track_names)

    def keep(self, event: Event) -> bool:
        """True to score the event, False to drop it; InvalidEvent to dead-letter it."""
        self._refresh()
        name = event.name or ""
        known = self._known.get(name)
        if known is None:
            known = self._rules.rules.mentions_event(name)
            if len(self._known) >= _MEMO_MAX:
                self._known.clear()
            self._known[name] = known
        label = name if name in self._named else OTHER
        if known:
            self.tally[(label, "accepted")] += 1
            return True
        if self._mode == "ignore":
            self.tally[(label, "ignored")] += 1
            return False
        self.tally[(label, "dead_lettered")] += 1
        raise InvalidEvent(
            "unknown_event",
            f"no rule mentions the track event {name[:64]!r} (rules {self._version}); "
            "track_unknown is dead_letter",
        )

    def flush(self) -> None:
        """Hand the tally since the last flush to the sensor."""
        if self.tally:
            self._sensor.track_events(self.tally)
            self.tally = Tally()
