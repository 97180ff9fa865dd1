-- Put owned messages back at the head of the queue, in their order, marked redelivered.
-- KEYS: inflight, queue, attempts. ARGV: messages.
-- uses: redelivered
local n = 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('LPUSH', KEYS[2], ARGV[i])
    redelivered(KEYS[3], ARGV[i])
    n = n + 1
  end
end
return n
