-- apply_batch.lua: apply a batch of scored events atomically; record applied offsets.
-- KEYS[1] offsets hash (field "topic:partition" -> last applied offset)
-- KEYS[2] due sorted set (lead key -> ms of its next inactivity tier drop)
-- KEYS[3] outbox stream (one entry per call that produced outputs)
-- KEYS[4 + 2*i], KEYS[5 + 2*i] lead state and seen-ids sorted set of batch lead slot i
-- ARGV[1] rules config JSON; ARGV[3] scored_at ms
-- ARGV[2] batch as MessagePack (half the decoding time of JSON), by column so that decoding
--   makes few tables: {"tps": [topic:partition],
--   "leads": [lead id per slot], "slot", "id", "t", "tp", "off", "flag": [one per event],
--   "aw": [[rule, points, rule, points...] per event],
--   "at": [[event index, [[attr, value, fit, bant_mask, dq, [[rule, points]...]]...]]...]}
-- Returns {outbox entry id or "", outputs JSON or "", duplicate event indices JSON}.
-- Idempotent: an event at or below its partition's recorded offset, or whose id was seen
-- within the dedup window, changes nothing, so redelivery after a crash is harmless.
local batch = cmsgpack.unpack(ARGV[2])
local scored_at = tonumber(ARGV[3])
local offsets_key, due_key, outbox_key = KEYS[1], KEYS[2], KEYS[3]

local applied, top = {}, {}
for i, tp in ipairs(batch.tps) do
  applied[i] = tonumber(redis.call('HGET', offsets_key, tp)) or -1
  top[i] = applied[i]
end

local leads, order, outs, dups = {}, {}, {}, {}

-- Field names per rule, and cap window keys as strings and back, made once per call: most
-- events of a batch share a few windows, and formatting or parsing a number costs more than
-- the lookup.
local R_FIELD, N_FIELD, C_FIELD = {}, {}, {}
for i, rule_id in ipairs(cfg.rules) do
  R_FIELD[i], N_FIELD[i], C_FIELD[i] = 'r:' .. rule_id, 'n:' .. rule_id, 'c:' .. rule_id
end
local window_key = setmetatable({}, {__index = function(keys, window)
  local key = fmt(window)
  keys[window] = key
  return key
end})
local window_of_key = setmetatable({}, {__index = function(windows, key)
  local window = tonumber(key)
  windows[key] = window
  return window
end})

local function add_points(L, rule, points, t)
  if points > 0 then
    local cap = cfg.caps[rule + 1]
    if cap[1] > 0 then
      local field = C_FIELD[rule + 1]
      local used_by_window = L.f[field] or {}
      local window = math.floor(t / cap[2])
      local key = window_key[window]
      local used = used_by_window[key] or 0
      points = math.min(points, cap[1] - used)
      if points <= 0 then return end
      used_by_window[key] = used + points
      local oldest = window - CAP_WINDOWS_KEPT
      for k in pairs(used_by_window) do
        if window_of_key[k] < oldest then used_by_window[k] = nil end
      end
      set_field(L, field, used_by_window)
    end
    if L.a == nil then L.a = t end
    if (t - L.a) / H > 500 then
      -- Re-anchor before 2^x overflows; scales every normalised field by the same factor.
      local factor = math.pow(2, (L.a - t) / H)
      L.e = L.e * factor
      for field, value in pairs(L.f) do
        if string.sub(field, 1, 2) == 'r:' then set_field(L, field, tonumber(value) * factor) end
      end
      L.a = t
    end
    local w = points * math.pow(2, (t - L.a) / H)
    L.e = L.e + w
    local field = R_FIELD[rule + 1]
    set_field(L, field, (tonumber(L.f[field]) or 0) + w)
  else
    L.pen = L.pen + points
    local field = N_FIELD[rule + 1]
    set_field(L, field, (tonumber(L.f[field]) or 0) + points)
  end
end

local function set_attributes(L, updates, t)
  local profile = profile_of(L)
  local changed = false
  for _, u in ipairs(updates) do
    local name = cfg.attributes[u[1] + 1]
    local cur = profile[name]
    if cur == nil or t > cur[1] or (t == cur[1] and u[2] >= cur[2]) then
      profile[name] = {t, u[2], u[3], u[4], u[5], u[6]}
      changed = true
    end
  end
  if not changed then return end
  L.profile_changed = true
  local fit, fdq, mask = 0, 0, 0
  for _, rec in pairs(profile) do
    fit = fit + rec[3]
    if rec[5] == 1 then fdq = 1 end
    mask = bor4(mask, rec[4])
  end
  L.fit, L.fdq, L.bant = fit, fdq, mask
end

local slots, ids, times, tpis, offs = batch.slot, batch.id, batch.t, batch.tp, batch.off
local awards, flags = batch.aw, batch.flag
local attributes_at = {}
for _, pair in ipairs(batch.at) do attributes_at[pair[1] + 1] = pair[2] end

for index = 1, #slots do
  local slot, event_id, t, tpi, offset = slots[index], ids[index], times[index], tpis[index] + 1,
    offs[index]
  if offset <= applied[tpi] then
    dups[#dups + 1] = index - 1
  else
    if offset > top[tpi] then top[tpi] = offset end
    local L = leads[slot]
    if L == nil then
      L = load_lead(KEYS[4 + 2 * slot], batch.leads[slot + 1])
      L.seen_key = KEYS[5 + 2 * slot]
      leads[slot] = L
      order[#order + 1] = slot
    end
    local duplicate = false
    -- ZADD NX is one call for the common case (a new id); only a known id needs its time.
    if DEDUP_MS > 0 and redis.call('ZADD', L.seen_key, 'NX', t, event_id) == 0 then
      local seen_at = tonumber(redis.call('ZSCORE', L.seen_key, event_id))
      if L.lt and seen_at >= L.lt - DEDUP_MS then
        duplicate = true
      else
        redis.call('ZADD', L.seen_key, t, event_id)
      end
    end
    if duplicate then
      dups[#dups + 1] = index - 1
    else
      local t_eval = t
      if L.lt ~= nil then
        t_eval = math.max(L.lt, t)
        advance(L, t_eval, scored_at, outs)
      end
      if L.arm == 0 and score_at(L, t_eval) < REARM then L.arm = 1 end
      local aw = awards[index]
      for j = 1, #aw, 2 do add_points(L, aw[j], aw[j + 1], t) end
      local updates = attributes_at[index]
      if updates then set_attributes(L, updates, t) end
      local flag = flags[index]
      if flag ~= 0 then
        local new_dq = (flag == 1) and 1 or 0
        local cur_dq = (L.dq == 1) and 1 or 0
        if L.dqt == nil or t > L.dqt or (t == L.dqt and new_dq >= cur_dq) then
          L.dq, L.dqt = flag, t
        end
      end
      L.lt = t_eval
      evaluate(L, t_eval, 'event', event_id, t, scored_at, outs)
    end
  end
end

for _, slot in ipairs(order) do
  local L = leads[slot]
  save_lead(L, due_key)
  -- Ids older than the window are ignored by the check above, so trimming them is only for
  -- memory: it runs when the lead's time enters a new window, not on every batch, and so
  -- keeps at most two windows of ids.
  if DEDUP_MS > 0 and L.lt and (L.loaded_lt == nil
      or math.floor(L.lt / TRIM_EVERY_MS) ~= math.floor(L.loaded_lt / TRIM_EVERY_MS)) then
    redis.call('ZREMRANGEBYSCORE', L.seen_key, '-inf', '(' .. fmt(L.lt - DEDUP_MS))
  end
end
for i, tp in ipairs(batch.tps) do
  if top[i] > applied[i] then redis.call('HSET', offsets_key, tp, fmt(top[i])) end
end

local entry, encoded = record_outputs(outbox_key, outs)
return {entry, encoded, cjson.encode(dups)}
