-- Remove exactly the dead-letter entries given, and requeue them if asked. KEYS: dead, queue.
-- ARGV: '1' to requeue (else '0'), then the exact dead-letter entries to remove.
-- Each entry is removed once (LREM from the oldest): one that another client removed meanwhile is skipped.
local n = 0
for i = 2, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    if ARGV[1] == '1' then
      local cut = string.find(ARGV[i], '\n', 1, true)
      redis.call('RPUSH', KEYS[2], string.sub(ARGV[i], cut + 1))
    end
    n = n + 1
  end
end
return n
