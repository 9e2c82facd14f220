#!lua
--@layout: this line is replaced at load by the call layout that store/commit.py generates
-- commit.lua: write one key group's share of a batch atomically, fenced against other writers.
-- The worker computed the new lead states in Python; Redis only checks and stores them, so this
-- script holds no scoring arithmetic. streamscore/store/commit.py builds every call and is the
-- one source of the layout below: it generates line 2's constants when the script is loaded.
--
-- KEYS[1]            the group's offsets hash ("topic:partition" -> last applied offset)
-- KEYS[2]            the group's outbox stream
-- KEYS[3]            the group's KPI counters hash           (FIXED_KEYS = 3)
-- KEYS[4 .. 3+D]     due sets named by the leads below (D = ARGV[1])
-- KEYS[4+D .. ]      lead keys, one per lead entry below, in order
-- ARGV[1] D, ARGV[2] T (topic-partitions), ARGV[3] L (leads), ARGV[4] C (KPI counters)
--                    (COUNT_ARGS = 4; TP_ARGS, LEAD_ARGS, COUNTER_ARGS per entry below)
-- then T times:      topic:partition, expected recorded offset ("" if none), new offset
-- then L times:      expected value prefix (its first 8 bytes, "" if absent), new value,
--                    due set to add to (index into the due KEYS, 0 for none), due ms,
--                    due set to remove from (index, 0 for none)
-- then C times:      KPI counter field, increment
-- last:              outputs to record in the outbox ("" for none), appended at send time
-- Returns {"ok", outbox entry id or ""} or {"conflict", what, which}: nothing was written.
local offsets_key, outbox_key, kpi_key = KEYS[1], KEYS[2], KEYS[3]
local n_due, n_tps, n_leads, n_counters = tonumber(ARGV[1]), tonumber(ARGV[2]),
  tonumber(ARGV[3]), tonumber(ARGV[4])
local outputs = ARGV[#ARGV]
local first_tp, first_lead_key = COUNT_ARGS + 1, FIXED_KEYS + 1 + n_due
local first_lead = first_tp + TP_ARGS * n_tps
local first_counter = first_lead + LEAD_ARGS * n_leads

-- Fencing: every check before any write, so a conflict leaves the group as it was. An offset
-- or a lead that moved since the worker read it means another writer (a zombie, a mis-keyed
-- producer's other worker, or this very call already applied before a timeout).
for t = 0, n_tps - 1 do
  local a = first_tp + TP_ARGS * t
  local recorded = redis.call('HGET', offsets_key, ARGV[a]) or ''
  if recorded ~= ARGV[a + 1] then return {'conflict', 'offset', ARGV[a]} end
end
for l = 0, n_leads - 1 do
  local key = KEYS[first_lead_key + l]
  if redis.call('GETRANGE', key, 0, VALUE_PREFIX_BYTES - 1) ~= ARGV[first_lead + LEAD_ARGS * l] then
    return {'conflict', 'lead', key}
  end
end

for l = 0, n_leads - 1 do
  local a = first_lead + LEAD_ARGS * l
  local key = KEYS[first_lead_key + l]
  redis.call('SET', key, ARGV[a + 1])
  local remove_from, add_to = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 2])
  if remove_from > 0 then redis.call('ZREM', KEYS[FIXED_KEYS + remove_from], key) end
  if add_to > 0 then redis.call('ZADD', KEYS[FIXED_KEYS + add_to], ARGV[a + 3], key) end
end
for t = 0, n_tps - 1 do
  local a = first_tp + TP_ARGS * t
  redis.call('HSET', offsets_key, ARGV[a], ARGV[a + 2])
end
for c = 0, n_counters - 1 do
  local a = first_counter + COUNTER_ARGS * c
  redis.call('HINCRBY', kpi_key, ARGV[a], ARGV[a + 1])
end
local entry = ''
if outputs ~= '' then entry = redis.call('XADD', outbox_key, '*', 'o', outputs) end
return {'ok', entry}
