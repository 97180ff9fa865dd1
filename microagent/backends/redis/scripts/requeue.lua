-- Move up to ARGV[1] dead letters back to the queue as fresh messages, each to its priority level
-- (the header's "priority"). KEYS: dead, queue, then the lists of levels 1..n-1.
-- uses: levels
local levels, leveled, n = levels_from(3), false, 0
for _ = 1, tonumber(ARGV[1]) do
  local entry = redis.call('LPOP', KEYS[1])
  if not entry then break end
  local cut = string.find(entry, '\n', 1, true)
  local key = level_key(KEYS[2], levels, cjson.decode(string.sub(entry, 1, cut - 1)).priority or 0)
  if key ~= KEYS[2] then leveled = true end
  redis.call('RPUSH', key, string.sub(entry, cut + 1))
  n = n + 1
end
if leveled then wake(KEYS[2]) end
return n
