"""The decay tick: inactivity tier drops that are due, applied even when a lead sends nothing.

While the worker is behind (a backlog or a replay), "now" is the event time it has applied so
far, not the wall clock: otherwise a replay would drop leads whose later events are still queued.
"""

from __future__ import annotations

import time
from functools import partial

from streamscore.config import Settings
from streamscore.runtime.clock import now_ms
from streamscore.runtime.emitter import Emitter
from streamscore.runtime.guard import RedisGuard
from streamscore.runtime.rules import RulesHolder
from streamscore.runtime.sensors import Sensor
from streamscore.store.store import RedisStore
from streamscore.store.wire import decode_outputs


class DecayTicker:
    """Applies due inactivity drops in Redis, group by group, and emits their tier changes."""

    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        rules: RulesHolder,
        sensor: Sensor,
        guard: RedisGuard,
        emitter: Emitter,
    ) -> None:
        self._max_leads = settings.decay_tick_max_leads
        self._store = store
        self._rules = rules
        self._sensor = sensor
        self._guard = guard
        self._emitter = emitter

    async def tick(self, caught_up: bool, stream_time_ms: int) -> int:
        """Apply drops due by now (by `stream_time_ms` while behind); returns leads advanced.

        The caller holds the pipeline's lock, so a tick never interleaves with a batch.
        """
        now = now_ms()
        until = now if caught_up else min(now, stream_time_ms)
        if until <= 0:
            return 0
        store = self._store
        advanced = 0
        config = self._rules.script_config
        for group in range(store.keys.groups):
            started = time.perf_counter()
            result, n = await self._guard(
                partial(store.tick, group, config, until, self._max_leads, now)
            )
            self._sensor.redis_call("tick", time.perf_counter() - started)
            advanced += n
            await self._emitter.emit(group, result.outbox_entry, decode_outputs(result.outputs))
        self._sensor.decay_due(await self._guard(partial(store.due_count, until)))
        return advanced
