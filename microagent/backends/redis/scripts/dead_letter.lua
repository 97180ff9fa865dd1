-- Dead-letter an owned message. KEYS: inflight, dead, attempts. ARGV: body, JSON header.
-- The header of a message of a priority level above 0 gets "priority", for a requeue.
-- uses: levels, forget
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local header = ARGV[2]
local level = level_of(KEYS[3], ARGV[1])
if level > 0 then header = string.sub(header, 1, -2) .. ',"priority":' .. level .. '}' end
redis.call('RPUSH', KEYS[2], header .. '\n' .. ARGV[1])
forget(KEYS[3], ARGV[1])
return 1
