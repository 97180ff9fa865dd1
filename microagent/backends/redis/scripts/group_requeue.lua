-- Move up to ARGV[1] dead letters back to the group as attempt 1, due now. KEYS: dead, retry.
-- ARGV: count, 28 characters of a fresh id (each member adds 4 more).
-- uses: requeued
local n = 0
for i = 1, tonumber(ARGV[1]) do
  local entry = redis.call('LPOP', KEYS[1])
  if not entry then break end
  redis.call('ZADD', KEYS[2], 0, requeued(entry, ARGV[2] .. string.format('%04x', i)))
  n = n + 1
end
return n
