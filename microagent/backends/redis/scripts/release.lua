-- Put owned messages back at the head of the queue (of their priority level), in their order,
-- marked redelivered. KEYS: inflight, queue, attempts, then the lists of levels 1..n-1.
-- ARGV: messages.
-- uses: levels, redelivered
local levels, leveled, n = levels_from(4), false, 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    local key = level_key(KEYS[2], levels, level_of(KEYS[3], ARGV[i]))
    if key ~= KEYS[2] then leveled = true end
    redis.call('LPUSH', key, ARGV[i])
    redelivered(KEYS[3], ARGV[i])
    n = n + 1
  end
end
if leveled then wake(KEYS[2]) end
return n
