-- A live member keeps what it holds: resets the idle time of its pending stream entries (only those
-- still its own) and extends the leases of its held retries. KEYS: stream, held.
-- ARGV: group, consumer, visibility (ms), count of stream ids, the ids, then the held members.
-- uses: now_ms
local n = tonumber(ARGV[4])
for i = 5, 4 + n do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
if #ARGV > 4 + n then
  local deadline = now_ms() + tonumber(ARGV[3])
  for i = 5 + n, #ARGV do redis.call('ZADD', KEYS[2], 'XX', deadline, ARGV[i]) end
end
return 1
