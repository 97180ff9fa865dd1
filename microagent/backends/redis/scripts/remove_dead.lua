-- Remove exactly the dead-letter entries given, and requeue them if asked (each to its priority
-- level, the header's "priority"). KEYS: dead, queue, then the lists of levels 1..n-1.
-- ARGV: '1' to requeue (else '0'), then the exact dead-letter entries to remove.
-- Each entry is removed once (LREM from the oldest): one that another client removed meanwhile is skipped.
-- uses: levels
local levels, leveled, n = levels_from(3), false, 0
for i = 2, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    if ARGV[1] == '1' then
      local cut = string.find(ARGV[i], '\n', 1, true)
      local key = level_key(KEYS[2], levels, cjson.decode(string.sub(ARGV[i], 1, cut - 1)).priority or 0)
      if key ~= KEYS[2] then leveled = true end
      redis.call('RPUSH', key, string.sub(ARGV[i], cut + 1))
    end
    n = n + 1
  end
end
if leveled then wake(KEYS[2]) end
return n
