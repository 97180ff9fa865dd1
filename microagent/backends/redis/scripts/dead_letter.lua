-- Dead-letter an owned message. KEYS: inflight, dead, attempts. ARGV: body, JSON header.
-- uses: forget
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2] .. '\n' .. ARGV[1])
forget(KEYS[3], ARGV[1])
return 1
