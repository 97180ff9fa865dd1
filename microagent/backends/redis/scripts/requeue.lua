-- Move up to ARGV[1] dead letters back to the queue as fresh messages. KEYS: dead, queue.
local n = 0
for _ = 1, tonumber(ARGV[1]) do
  local entry = redis.call('LPOP', KEYS[1])
  if not entry then break end
  local cut = string.find(entry, '\n', 1, true)
  redis.call('RPUSH', KEYS[2], string.sub(entry, cut + 1))
  n = n + 1
end
return n
