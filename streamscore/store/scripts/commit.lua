#!lua
--@layout: this line is replaced at load by the call layout that store/commit.py generates
-- commit.lua: write one key group's share of a batch atomically, fenced against other writers.
-- The worker computed the new lead states in Python; Redis only checks and stores them, so this
-- script holds no scoring arithmetic. streamscore/store/commit.py builds every call and is the
-- one source of the layout below: it generates line 2's constants when the script is loaded.
--
-- KEYS[1]            the group's offsets hash ("topic:partition" -> last applied offset)
-- KEYS[2]            the group's outbox stream
-- KEYS[3]            the group's KPI counters hash
-- KEYS[4]            the group's forgotten set ("digest@forget ms" of forgotten leads; it may
--                    sit under another prefix, the live one's for a replay)  (FIXED_KEYS = 4)
-- KEYS[5 .. 4+Z]     sorted sets the leads below are added to or removed from (due sets, tier
--                    indexes; Z = ARGV[1])
-- KEYS[5+Z .. ]      keys written (leads, accounts), one per write entry below, in order,
--                    then keys deleted, one per delete entry
-- ARGV[1] Z, ARGV[2] T (topic-partitions), ARGV[3] L (writes), ARGV[4] C (KPI counters),
-- ARGV[5] D (deletes), ARGV[6] X (outbox rewrites), ARGV[7] F: the size the forgotten set
-- must have ("" for unchecked; the worker scored the batch knowing that many forgets)
--                    (COUNT_ARGS = 7; TP_ARGS, COUNTER_ARGS, REWRITE_ARGS per entry,
--                    LEAD_ARGS + pairs, DELETE_ARGS + removals)
-- then T times:      topic:partition, expected recorded offset ("" if none), new offset
-- then L times:      expected value prefix (its first 8 bytes, "" if absent), new value,
--                    A (sorted-set additions), R (removals)  (LEAD_ARGS = 4), then A times
--                    a sorted set (index into its KEYS, 1-based) and the lead's score in it,
--                    then R times a sorted set to remove the lead from
-- then C times:      KPI counter field, increment
-- then D times:      expected value prefix, member to add to the forgotten set ("" for none),
--                    R (removals)  (DELETE_ARGS = 3), then R times a sorted set to remove the
--                    deleted key from
-- then X times:      outbox entry id, its replacement ("" for none): an entry still pending is
--                    deleted and the replacement added (a forgotten lead's outputs taken out);
--                    one already acknowledged (gone) is left gone
-- last:              the outbox entry ("" for none), appended at send time
-- Returns {"ok", outbox entry id or ""} or {"conflict", what, which}: nothing was written.
-- "forgotten": a lead of the group was forgotten since the worker read the set (it only grows).
local offsets_key, outbox_key, kpi_key, forgotten_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local n_sets, n_tps, n_leads, n_counters = tonumber(ARGV[1]), tonumber(ARGV[2]),
  tonumber(ARGV[3]), tonumber(ARGV[4])
local n_deletes, n_rewrites, forgotten_size = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local outbox = ARGV[#ARGV]
local first_tp, first_lead_key = COUNT_ARGS + 1, FIXED_KEYS + 1 + n_sets
local first_lead = first_tp + TP_ARGS * n_tps
local first_delete_key = first_lead_key + n_leads

-- Fencing: every check before any write, so a conflict leaves the group as it was. An offset
-- or a lead that moved since the worker read it means another writer (a zombie, a mis-keyed
-- producer's other worker, or this very call already applied before a timeout). A forgotten
-- set that grew means a forget the batch was scored without: it may hold the forgotten lead.
if forgotten_size ~= '' and redis.call('SCARD', forgotten_key) ~= tonumber(forgotten_size) then
  return {'conflict', 'forgotten', forgotten_key}
end
for t = 0, n_tps - 1 do
  local a = first_tp + TP_ARGS * t
  local recorded = redis.call('HGET', offsets_key, ARGV[a]) or ''
  if recorded ~= ARGV[a + 1] then return {'conflict', 'offset', ARGV[a]} end
end
local starts = {}
local a = first_lead
for l = 1, n_leads do
  local key = KEYS[first_lead_key + l - 1]
  if redis.call('GETRANGE', key, 0, VALUE_PREFIX_BYTES - 1) ~= ARGV[a] then
    return {'conflict', 'lead', key}
  end
  starts[l] = a
  a = a + LEAD_ARGS + 2 * tonumber(ARGV[a + 2]) + tonumber(ARGV[a + 3])
end
local first_counter = a
local deletes = {}
a = first_counter + COUNTER_ARGS * n_counters
for d = 1, n_deletes do
  local key = KEYS[first_delete_key + d - 1]
  if redis.call('GETRANGE', key, 0, VALUE_PREFIX_BYTES - 1) ~= ARGV[a] then
    return {'conflict', 'lead', key}
  end
  deletes[d] = a
  a = a + DELETE_ARGS + tonumber(ARGV[a + 2])
end
local first_rewrite = a

for l = 1, n_leads do
  local key = KEYS[first_lead_key + l - 1]
  local s = starts[l]
  redis.call('SET', key, ARGV[s + 1])
  local adds, removes = tonumber(ARGV[s + 2]), tonumber(ARGV[s + 3])
  local p = s + LEAD_ARGS
  for _ = 1, adds do
    redis.call('ZADD', KEYS[FIXED_KEYS + tonumber(ARGV[p])], ARGV[p + 1], key)
    p = p + 2
  end
  for _ = 1, removes do
    redis.call('ZREM', KEYS[FIXED_KEYS + tonumber(ARGV[p])], key)
    p = p + 1
  end
end
for t = 0, n_tps - 1 do
  local b = first_tp + TP_ARGS * t
  redis.call('HSET', offsets_key, ARGV[b], ARGV[b + 2])
end
for c = 0, n_counters - 1 do
  local b = first_counter + COUNTER_ARGS * c
  redis.call('HINCRBY', kpi_key, ARGV[b], ARGV[b + 1])
end
for d = 1, n_deletes do
  local key = KEYS[first_delete_key + d - 1]
  local s = deletes[d]
  redis.call('DEL', key)
  if ARGV[s + 1] ~= '' then redis.call('SADD', forgotten_key, ARGV[s + 1]) end
  local p = s + DELETE_ARGS
  for _ = 1, tonumber(ARGV[s + 2]) do
    redis.call('ZREM', KEYS[FIXED_KEYS + tonumber(ARGV[p])], key)
    p = p + 1
  end
end
for x = 0, n_rewrites - 1 do
  local b = first_rewrite + REWRITE_ARGS * x
  if redis.call('XDEL', outbox_key, ARGV[b]) == 1 and ARGV[b + 1] ~= '' then
    redis.call('XADD', outbox_key, '*', 'o', ARGV[b + 1])
  end
end
local entry = ''
if outbox ~= '' then entry = redis.call('XADD', outbox_key, '*', 'o', outbox) end
return {'ok', entry}
