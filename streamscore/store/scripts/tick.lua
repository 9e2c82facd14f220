-- tick.lua: apply inactivity tier drops that are due, for at most ARGV[3] leads.
-- KEYS[1] due sorted set, KEYS[2] outbox stream
-- ARGV[1] rules config JSON; ARGV[2] until ms (drops due at or before it are applied);
-- ARGV[3] max leads this call; ARGV[4] scored_at ms
-- Returns {outbox entry id or "", outputs JSON or "", number of leads advanced}.
-- Lead keys come from the due set, not KEYS: they share its hash tag, so this stays legal on
-- Redis Cluster. Popping and applying in one script means two workers never emit a drop twice.
local until_ms, limit, scored_at = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local due_key, outbox_key = KEYS[1], KEYS[2]
local members = redis.call('ZRANGEBYSCORE', due_key, '-inf', until_ms, 'LIMIT', 0, limit)
local outs = {}
for _, key in ipairs(members) do
  local L = load_lead(key, nil)
  if L.lt == nil then
    redis.call('ZREM', due_key, key)
  else
    advance(L, until_ms, scored_at, outs)
    save_lead(L, due_key)
  end
end
local entry, encoded = record_outputs(outbox_key, outs)
return {entry, encoded, #members}
