-- Schedule a retry, only if this consumer still owns the message (else it was reclaimed and
-- will be delivered again anyway). KEYS: inflight, delayed, attempts.
-- ARGV: body, delay seconds, a unique 32-char id, the next attempt number.
-- A message of a priority level keeps it: the id names the level (move_due).
-- uses: now, levels
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local id = ARGV[3]
local level = level_of(KEYS[3], ARGV[1])
if level > 0 then id = string.format('p%02d', level) .. string.sub(id, 4) end
redis.call('ZADD', KEYS[2], now() + tonumber(ARGV[2]), id .. ARGV[1])
redis.call('HSET', KEYS[3], redis.sha1hex(ARGV[1]), ARGV[4])
return 1
