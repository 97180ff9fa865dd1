-- Remove exactly the dead letters given, and requeue them if asked. KEYS: dead, retry.
-- ARGV: '1' to requeue (else '0'), 28 characters of a fresh id, then the exact entries.
-- uses: requeued
local n = 0
for i = 3, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    if ARGV[1] == '1' then
      redis.call('ZADD', KEYS[2], 0, requeued(ARGV[i], ARGV[2] .. string.format('%04x', i)))
    end
    n = n + 1
  end
end
return n
