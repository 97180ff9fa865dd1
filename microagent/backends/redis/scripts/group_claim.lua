-- What a member takes besides new entries: leases of members that died (held retries past their
-- deadline), retries now due, and stream entries idle past the visibility timeout (XAUTOCLAIM).
-- KEYS: stream, retry, held. ARGV: group, consumer (32 chars), visibility (ms), count, cursor, '1' to
-- also delete the consumers that hold nothing and were idle for a minute (dead members; harmless for
-- a live one, which XREADGROUP creates again).
-- Returns {held members taken, 1 per member whose lease had expired else 0, stream entries,
-- next cursor, ms until the next retry is due (-1: none)}.
-- uses: now_ms
local now = now_ms()
local vt, n = tonumber(ARGV[3]), tonumber(ARGV[4])
local taken, expired = {}, {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, n)) do
  redis.call('ZREM', KEYS[3], member)
  local mine = ARGV[2] .. string.sub(member, 33)
  redis.call('ZADD', KEYS[3], now + vt, mine)
  taken[#taken + 1] = mine
  expired[#expired + 1] = 1
end
if #taken < n then
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, n - #taken)) do
    redis.call('ZREM', KEYS[2], member)
    local mine = ARGV[2] .. member
    redis.call('ZADD', KEYS[3], now + vt, mine)
    taken[#taken + 1] = mine
    expired[#expired + 1] = 0
  end
end
local entries, cursor = {}, ARGV[5]
if #taken < n and redis.call('EXISTS', KEYS[1]) == 1 then
  local ok, claimed = pcall(redis.call, 'XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], vt, cursor, 'COUNT', n - #taken)
  if ok then
    cursor = claimed[1]
    entries = claimed[2]
  end
end
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
  if ok then
    for _, consumer in ipairs(consumers) do
      local info = {}
      for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
      if info['pending'] == 0 and info['idle'] > 60000 and info['name'] ~= ARGV[2] then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
      end
    end
  end
end
local wait = -1
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then wait = math.max(tonumber(first[2]) - now, 0) end
return {taken, expired, entries, cursor, wait}
