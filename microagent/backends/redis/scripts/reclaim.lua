-- Return the in-flight messages of consumers whose heartbeat expired, marked redelivered.
-- KEYS: consumers set, queue, attempts, then (heartbeat, inflight) per candidate. ARGV: candidate ids.
-- Also used for a consumer's own list on close, after deleting its heartbeat.
-- uses: redelivered
local n = 0
for i, id in ipairs(ARGV) do
  local heartbeat, inflight = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  if redis.call('EXISTS', heartbeat) == 0 then
    while true do
      local message = redis.call('LMOVE', inflight, KEYS[2], 'RIGHT', 'LEFT')
      if not message then break end
      redelivered(KEYS[3], message)
      n = n + 1
    end
    redis.call('SREM', KEYS[1], id)
  end
end
return n
