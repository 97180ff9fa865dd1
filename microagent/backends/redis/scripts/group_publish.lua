-- A signal with groups: PUBLISH it (broadcast receivers, 1.x peers) and append it to its stream,
-- trimmed to the retention its groups asked for, in one round trip. KEYS: stream.
-- ARGV: channel, published bytes, stored bytes ('' when the same), sender, max length, max age (ms).
redis.call('PUBLISH', ARGV[1], ARGV[2])
local data = ARGV[3]
if data == '' then data = ARGV[2] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '=', ARGV[5], '*', 'd', data, 's', ARGV[4])
local oldest = tonumber(string.match(id, '^(%d+)')) - tonumber(ARGV[6])
if oldest > 0 then redis.call('XTRIM', KEYS[1], 'MINID', '=', oldest) end
return 1
