-- Return the in-flight messages of consumers whose heartbeat expired, marked redelivered, each
-- to the head of its priority level's list.
-- KEYS: consumers set, queue, attempts, then (heartbeat, inflight) per candidate, then the lists
-- of levels 1..n-1. ARGV: candidate ids.
-- Also used for a consumer's own list on close, after deleting its heartbeat.
-- uses: levels, redelivered
local levels, leveled, n = levels_from(4 + 2 * #ARGV), false, 0
for i, id in ipairs(ARGV) do
  local heartbeat, inflight = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  if redis.call('EXISTS', heartbeat) == 0 then
    while true do
      local message = redis.call('RPOP', inflight)
      if not message then break end
      local key = level_key(KEYS[2], levels, level_of(KEYS[3], message))
      if key ~= KEYS[2] then leveled = true end
      redis.call('LPUSH', key, message)
      redelivered(KEYS[3], message)
      n = n + 1
    end
    redis.call('SREM', KEYS[1], id)
  end
end
if leveled then wake(KEYS[2]) end
return n
