-- Schedule a retry, only if this consumer still owns the message (else it was reclaimed and
-- will be delivered again anyway). KEYS: inflight, delayed, attempts.
-- ARGV: body, delay seconds, a unique 32-char id, the next attempt number.
-- uses: now
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], now() + tonumber(ARGV[2]), ARGV[3] .. ARGV[1])
redis.call('HSET', KEYS[3], redis.sha1hex(ARGV[1]), ARGV[4])
return 1
