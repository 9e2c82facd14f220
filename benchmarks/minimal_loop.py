"""Baseline (c), the practical limit: an aiokafka getmany loop and one small Lua call per batch.

The simple job (benchmarks/simple_job.py) and nothing else: each lead is a Redis hash
`<prefix>:lead:<id>` (s: score at t, t: time of its last event, a: armed), and one EVALSHA per
batch applies decay, award and handoff to every lead of the batch and records the batch's
offsets in `<prefix>:offsets` in the same call. Handoffs are produced to a topic. It imports
nothing from streamscore.

Order: a lead's events sit on four topics, each partition in event-time order (the workload is
produced that way). Records are held per topic-partition and released per partition number up
to the smallest event time any of its four topic-partitions may still hold: the last buffered
time, or unbounded once that topic-partition is caught up with the high watermark of its last
fetch. That is exact for a pre-produced workload (nothing arrives later with an older time);
live traffic would need a wait bound, as streamscore's aligner has. A topic-partition holding
FLOW_HIGH records is paused until it is down to half, so the topics ahead in time do not pile
up in memory.

One call is in flight while the next batch is fetched and parsed (a single connection keeps
the calls in order). Runs until SIGTERM, then flushes its handoffs.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import signal
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Final
from urllib.parse import urlparse

import hiredis
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks.simple_job import HALF_LIFE_MS, HANDOFF_AT, REARM_BELOW, points_of

FLOW_HIGH = 20_000

#: One batch of the simple job. Returns {event index, score, ...} for each handoff.
APPLY_LUA = """
local offsets_key = KEYS[1]
local half_life_ms = tonumber(ARGV[1])
local handoff_at = tonumber(ARGV[2])
local rearm_below = tonumber(ARGV[3])
local offset_pairs = tonumber(ARGV[4])
-- ARGV[5 .. 4 + 2 * offset_pairs]: (field, offset) pairs for offsets_key;
-- then for each lead key KEYS[2..]: a count n, then n pairs (time ms, points), in time order.

local out = {}
local event = 0
local i = 5 + 2 * offset_pairs
for k = 2, #KEYS do
  local key = KEYS[k]
  local state = redis.call('HMGET', key, 's', 't', 'a')
  local s = tonumber(state[1]) or 0
  local t = tonumber(state[2])
  local armed = state[3] ~= '0'
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    local te = tonumber(ARGV[i])
    local points = tonumber(ARGV[i + 1])
    i = i + 2
    if t then
      s = s * 2 ^ ((t - te) / half_life_ms)
    end
    t = te
    if s < rearm_below then armed = true end
    s = s + points
    if s < rearm_below then armed = true end
    if armed and s >= handoff_at then
      armed = false
      out[#out + 1] = event
      out[#out + 1] = string.format('%.17g', s)
    end
    event = event + 1
  end
  redis.call('HSET', key, 's', string.format('%.17g', s), 't', t, 'a', armed and '1' or '0')
end
if offset_pairs > 0 then
  redis.call('HSET', offsets_key, unpack(ARGV, 5, 4 + 2 * offset_pairs))
end
return out
"""


#: A parsed record waiting for its turn: (event time ms, lead id, event id, points, offset).
#: A plain tuple: building a NamedTuple per record cost about a microsecond more.
Pending = tuple[int, str, str, int, int]
TIME: Final = 0
LEAD: Final = 1
EVENT: Final = 2
POINTS: Final = 3
OFFSET: Final = 4


class RawRedis:
    """One RESP connection: requests packed by hiredis, replies parsed by hiredis, in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = hiredis.Reader()

    @classmethod
    async def connect(cls, url: str) -> RawRedis:
        """Connect to redis://host:port."""
        parsed = urlparse(url)
        reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port or 6379)
        return cls(reader, writer)

    def send(self, *args: Any) -> None:
        """Queue one command; its reply comes from the next `reply()` in order."""
        self._writer.write(hiredis.pack_command(args))

    async def reply(self) -> Any:
        """The next reply (raises the server's error)."""
        await self._writer.drain()
        while True:
            found = self._parser.gets()
            if found is not False:
                if isinstance(found, hiredis.ReplyError):
                    raise found
                return found
            data = await self._reader.read(1 << 16)
            if not data:
                raise ConnectionError("redis closed the connection")
            self._parser.feed(data)

    async def call(self, *args: Any) -> Any:
        """Send one command and wait for its reply."""
        self.send(*args)
        return await self.reply()

    def close(self) -> None:
        """Close the connection."""
        self._writer.close()


class Merger:
    """Per topic-partition buffers released per partition number in event-time order."""

    def __init__(self, tps: Sequence[TopicPartition]) -> None:
        self.buffers: dict[TopicPartition, list[Pending]] = {tp: [] for tp in tps}
        self.next_offset: dict[TopicPartition, int] = dict.fromkeys(tps, 0)
        self.groups: dict[int, list[TopicPartition]] = {}
        for tp in tps:
            self.groups.setdefault(tp.partition, []).append(tp)

    def release(
        self, highwater: dict[TopicPartition, int | None]
    ) -> tuple[list[Pending], dict[TopicPartition, int]]:
        """Records now safe to apply, in event-time order, and the last offset per tp."""
        out: list[Pending] = []
        last: dict[TopicPartition, int] = {}
        for tps in self.groups.values():
            # Releasing a buffer's last record may leave it empty and caught up, which lifts
            # the bound: go round until nothing more can go.
            while runs := self._release_group(tps, highwater, last):
                out += runs
        return out, last

    def _release_group(
        self,
        tps: list[TopicPartition],
        highwater: dict[TopicPartition, int | None],
        last: dict[TopicPartition, int],
    ) -> list[Pending]:
        time_of = itemgetter(0)
        bound = float("inf")
        for tp in tps:
            buf = self.buffers[tp]
            if buf:
                bound = min(bound, buf[-1][TIME])
            else:
                hw = highwater.get(tp)
                if hw is None or self.next_offset[tp] < hw:
                    return []  # it may still hold older events: wait for its fetch
        runs: list[Pending] = []
        for tp in tps:
            buf = self.buffers[tp]
            n = bisect.bisect_right(buf, bound, key=time_of)
            if n:
                runs += buf[:n]
                last[tp] = buf[n - 1][OFFSET]
                del buf[:n]
        runs.sort(key=time_of)  # timsort merges the sorted runs
        return runs


def pack_call(
    sha: bytes,
    prefix: str,
    batch: list[Pending],
    offsets: dict[TopicPartition, int],
    field_of: dict[TopicPartition, str],
) -> tuple[tuple[Any, ...], list[Pending]]:
    """The EVALSHA arguments for a batch, and its events in the order the script numbers them."""
    by_lead: dict[str, list[Pending]] = {}
    for ev in batch:
        lead_events = by_lead.get(ev[LEAD])
        if lead_events is None:
            by_lead[ev[LEAD]] = [ev]
        else:
            lead_events.append(ev)
    keys: list[str] = [f"{prefix}:offsets"]
    args: list[Any] = [HALF_LIFE_MS, HANDOFF_AT, REARM_BELOW, len(offsets)]
    for tp, off in offsets.items():
        args += (field_of[tp], off)
    ordered: list[Pending] = []
    for lead_id, lead_events in by_lead.items():
        keys.append(f"{prefix}:lead:{lead_id}")
        args.append(len(lead_events))
        for ev in lead_events:
            args += (ev[TIME], ev[POINTS])
        ordered += lead_events
    return ("EVALSHA", sha, len(keys), *keys, *args), ordered


async def run(opts: argparse.Namespace) -> None:
    """Consume, merge, apply, hand off; until SIGTERM."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    redis = await RawRedis.connect(opts.redis_url)
    sha = await redis.call("SCRIPT", "LOAD", APPLY_LUA)
    assert sha == hashlib.sha1(APPLY_LUA.encode()).hexdigest().encode()
    topics = opts.topics.split(",")
    tps = [TopicPartition(t, p) for t in topics for p in range(opts.partitions)]
    field_of = {tp: f"{topics.index(tp.topic)}:{tp.partition}" for tp in tps}
    stored = await redis.call("HGETALL", f"{opts.prefix}:offsets")
    resume = {stored[i].decode(): int(stored[i + 1]) for i in range(0, len(stored), 2)}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=opts.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
    )
    producer = AIOKafkaProducer(bootstrap_servers=opts.bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    merger = Merger(tps)
    consumer.assign(tps)
    for tp in tps:
        start = resume.get(field_of[tp], -1) + 1
        consumer.seek(tp, start)
        merger.next_offset[tp] = start
    paused: set[TopicPartition] = set()
    loads = orjson.loads
    in_flight: list[Pending] | None = None

    async def finish(events: list[Pending]) -> None:
        found = await redis.reply()
        for j in range(0, len(found), 2):
            ev = events[found[j]]
            body = {
                "lead_id": ev[LEAD],
                "triggering_event_id": ev[EVENT],
                "score": float(found[j + 1]),
                "event_time_ms": ev[TIME],
            }
            # Not awaited one by one: the producer batches; stop() flushes what is left.
            await producer.send(opts.handoffs, orjson.dumps(body), ev[LEAD].encode())

    try:
        while not stopping.is_set():
            fetched = await consumer.getmany(timeout_ms=20, max_records=opts.batch)
            for tp, records in fetched.items():
                append = merger.buffers[tp].append
                for r in records:
                    doc = loads(r.value)
                    points = points_of(doc)
                    if points is not None:
                        append(
                            (doc["time"], doc["lead_id"], doc["event_id"], int(points), r.offset)
                        )
                merger.next_offset[tp] = records[-1].offset + 1
            ready, offsets = merger.release({tp: consumer.highwater(tp) for tp in tps})
            for tp, buf in merger.buffers.items():
                if tp in paused and len(buf) <= FLOW_HIGH // 2:
                    consumer.resume(tp)
                    paused.discard(tp)
                elif tp not in paused and len(buf) >= FLOW_HIGH:
                    consumer.pause(tp)
                    paused.add(tp)
            if in_flight is not None:
                await finish(in_flight)
                in_flight = None
            if ready:
                command, in_flight = pack_call(sha, opts.prefix, ready, offsets, field_of)
                redis.send(*command)
        if in_flight is not None:
            await finish(in_flight)
    finally:
        await producer.stop()
        await consumer.stop()
        redis.close()


def main(argv: list[str] | None = None) -> None:
    """Parse the options and run."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.minimal_loop", description=__doc__)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--topics", required=True, help="the input topics, comma-separated")
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--handoffs", required=True, help="the handoff topic")
    p.add_argument("--prefix", required=True, help="Redis key prefix")
    p.add_argument("--batch", type=int, default=5000, help="max records per getmany")
    asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    main()
