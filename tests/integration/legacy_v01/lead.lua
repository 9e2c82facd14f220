-- lead.lua: lead-state arithmetic shared by apply_batch.lua and tick.lua.
-- Mirrors streamscore/scoring/model.py (the reference); the parity tests compare them.
-- Expects ARGV[1] = rules config JSON (CompiledRules.script_config() plus dedup_window_ms).
-- Lead fields (a MessagePack map in one string key): id, a (anchor ms), e (positive points
-- normalised to the anchor), pen (penalties), lt (last evaluation ms), tier (0-based), arm, n (output sequence),
-- dq/dqt (event flag and its time), fit/fdq/bant (derived from the profile), ver,
-- r:<rule> (normalised positive points), n:<rule> (penalties), P (the profile, packed: {attr:
-- {time, value, fit, bant mask, disqualifies, reasons}}), c:<rule> ({window: points used}),
-- due (ms of the next inactivity drop, if any).
local cfg = cjson.decode(ARGV[1])
local H = cfg.half_life_ms
local INF = math.huge
local LN2 = math.log(2.0)
local NTIERS = #cfg.tiers
local function nz(v, default) if v == nil or v == cjson.null then return default end return v end
local ENTER, EXIT = {}, {}
for i = 1, NTIERS do
  ENTER[i] = nz(cfg.enter[i], -INF)
  EXIT[i] = nz(cfg.exit[i], -INF)
end
local FLOOR, CEIL = nz(cfg.floor, -INF), nz(cfg.ceiling, INF)
local REARM = nz(cfg.rearm_below, -INF)
local GRADES = {nz(cfg.grades[1], INF), nz(cfg.grades[2], INF), nz(cfg.grades[3], INF)}
local TOTAL = cfg.basis_total
local DEDUP_MS = cfg.dedup_window_ms
local CAP_WINDOWS_KEPT = 8
local TRIM_EVERY_MS = math.max(DEDUP_MS, 1)
local CORE = {'id', 'a', 'e', 'pen', 'lt', 'tier', 'arm', 'n', 'dq', 'dqt', 'fit', 'fdq', 'bant'}
-- Core fields at these values are not stored (absent reads as the default): most leads have
-- no penalties, profile or flags, and every stored field costs packing on every save.
-- Kept equal to streamscore.store.wire.LEAD_DEFAULTS by a unit test.
local DEFAULTS = {e = 0, pen = 0, tier = 0, arm = 1, n = 0, dq = 0, fit = 0, fdq = 0, bant = 0}

local function fmt(x) return string.format('%.17g', x) end

-- A lead is one string key holding a MessagePack map of its fields: one GET and one SET per
-- lead and call. A hash cost about 3x as much here (HGETALL into a table, HSET of the changed
-- fields), and most of a script's time goes to leads touched once or twice per batch.
local function load_lead(key, lead_id)
  local raw = redis.call('GET', key)
  local f = {}
  if raw then f = cmsgpack.unpack(raw) end
  local L = {key = key, f = f, dirty = {}}
  L.id = f.id or lead_id
  L.a = tonumber(f.a)
  L.e = tonumber(f.e) or 0
  L.pen = tonumber(f.pen) or 0
  L.lt = tonumber(f.lt)
  L.tier = math.min(tonumber(f.tier) or 0, NTIERS - 1)
  L.arm = tonumber(f.arm) or 1
  L.n = tonumber(f.n) or 0
  L.dq = tonumber(f.dq) or 0
  L.dqt = tonumber(f.dqt)
  L.fit = tonumber(f.fit) or 0
  L.fdq = tonumber(f.fdq) or 0
  L.bant = tonumber(f.bant) or 0
  L.loaded_lt = L.lt
  return L
end

-- Fields hold Lua values (numbers, strings, tables); the lead is packed once, when saved.
local function set_field(L, field, value)
  L.f[field] = value
  L.dirty[field] = true
end

-- The profile stays packed (field P) unless an identify event or an output needs it, rather than
-- unpacking its nested tables on every load of a profiled lead for events that never read it
-- (python -m benchmarks.lua_replay: 31.8 and 33.4 us an event before, 31.4 and 31.1 after).
local function profile_of(L)
  if L.profile == nil then
    local profile = {}
    if L.f.P then profile = cmsgpack.unpack(L.f.P) end
    -- States saved before the profile was packed hold one p:<attr> field per attribute.
    for field, rec in pairs(L.f) do
      if string.sub(field, 1, 2) == 'p:' then
        profile[string.sub(field, 3)] = rec
        set_field(L, field, nil)
        L.profile_changed = true
      end
    end
    L.profile = profile
  end
  return L.profile
end


local function engagement_at(L, t)
  if L.a == nil then return 0 end
  return L.e * math.pow(2, (L.a - t) / H)
end

local function score_at(L, t)
  local base = 0
  if TOTAL then base = L.fit end
  local s = base + engagement_at(L, t) + L.pen
  if s < FLOOR then s = FLOOR end
  if s > CEIL then s = CEIL end
  return s
end

local function grade_of(fit)
  for i = 1, 3 do
    if fit >= GRADES[i] then return i end
  end
  return 4
end

local function bor4(x, y)
  local r, bit = 0, 1
  for _ = 1, 4 do
    if x % 2 == 1 or y % 2 == 1 then r = r + bit end
    x, y, bit = math.floor(x / 2), math.floor(y / 2), bit * 2
  end
  return r
end

-- Set bits of each 4-bit BANT mask (evaluated on every event).
local BITS = {[0] = 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4}

local function reasons_at(L, t)
  local by_rule, order = {}, {}
  local function add(rule, points)
    if by_rule[rule] == nil then
      by_rule[rule] = 0
      order[#order + 1] = rule
    end
    by_rule[rule] = by_rule[rule] + points
  end
  for _, rec in pairs(profile_of(L)) do
    for _, pair in ipairs(rec[6]) do add(pair[1], pair[2]) end
  end
  for field, value in pairs(L.f) do
    local kind, name = string.sub(field, 1, 2), string.sub(field, 3)
    if kind == 'r:' then
      add(name, tonumber(value) * math.pow(2, (L.a - t) / H))
    elseif kind == 'n:' then
      add(name, tonumber(value))
    end
  end
  table.sort(order, function(x, y)
    if by_rule[x] ~= by_rule[y] then return by_rule[x] > by_rule[y] end
    return x < y
  end)
  local top = {}
  for i = 1, math.min(3, #order) do top[i] = {order[i], fmt(by_rule[order[i]])} end
  return top
end

-- Not a closure inside evaluate: that would allocate one per event.
local function emit(L, kind, old, s, grade, t, event_id, event_ms, cause, scored_at, outs)
  L.n = L.n + 1
  outs[#outs + 1] = {kind, L.id, L.n, cfg.tiers[old + 1], cfg.tiers[L.tier + 1], fmt(s),
    fmt(engagement_at(L, t)), fmt(L.fit), grade, L.bant, reasons_at(L, t),
    event_id or cjson.null, event_ms, cause, cfg.version, scored_at}
end

local function evaluate(L, t, cause, event_id, event_ms, scored_at, outs)
  local s = score_at(L, t)
  local before = L.tier
  local new = L.tier
  for i = NTIERS - 1, L.tier + 1, -1 do
    if s >= ENTER[i + 1] then
      new = i
      break
    end
  end
  if new == L.tier then
    while new > 0 and s < EXIT[new + 1] do new = new - 1 end
  end
  local grade = grade_of(L.fit)
  if new ~= L.tier then
    local old = L.tier
    L.tier = new
    emit(L, 'tier_change', old, s, grade, t, event_id, event_ms, cause, scored_at, outs)
  end
  if s < REARM then L.arm = 1 end
  local qualified = L.tier >= cfg.handoff_tier and grade <= cfg.min_grade
    and BITS[L.bant] >= cfg.min_bant and L.dq ~= 1 and L.fdq ~= 1
  if qualified and L.arm == 1 then
    L.arm = 0
    emit(L, 'handoff', before, s, grade, t, event_id, event_ms, cause, scored_at, outs)
  end
end

local function due_of(L)
  if L.tier == 0 or L.lt == nil then return nil end
  local base = L.pen
  if TOTAL then base = base + L.fit end
  local gap = EXIT[L.tier + 1] - base
  local e = engagement_at(L, L.lt)
  if e <= 0 or gap <= 0 then return nil end
  local t_star = L.lt + H * (math.log(e / gap) / LN2)
  return math.max(math.floor(t_star) + 1, L.lt + 1)
end

local function advance(L, until_ms, scored_at, outs)
  while true do
    local due = due_of(L)
    if due == nil or due > until_ms then return end
    L.lt = due
    evaluate(L, due, 'decay', nil, due, scored_at, outs)
  end
end

-- Outputs go to the outbox stream in the same call that produced them (one entry per call).
local function record_outputs(outbox_key, outs)
  if #outs == 0 then return '', '' end
  local encoded = cjson.encode(outs)
  return redis.call('XADD', outbox_key, '*', 'o', encoded), encoded
end

local function save_lead(L, due_key)
  if L.profile_changed then
    if next(L.profile) == nil then set_field(L, 'P', nil)
    else set_field(L, 'P', cmsgpack.pack(L.profile)) end
  end
  local changed = next(L.dirty) ~= nil
  for _, field in ipairs(CORE) do
    local v = L[field]
    if v == DEFAULTS[field] then v = nil end
    if v ~= L.f[field] then
      L.f[field] = v
      changed = true
    end
  end
  if L.f.ver ~= cfg.version then
    L.f.ver = cfg.version
    changed = true
  end
  local due = due_of(L)
  if due ~= L.f.due then
    if due == nil then
      redis.call('ZREM', due_key, L.key)
    else
      redis.call('ZADD', due_key, due, L.key)
    end
    L.f.due = due
    changed = true
  end
  if changed then redis.call('SET', L.key, cmsgpack.pack(L.f)) end
end
