-- Take up to ARGV[1] messages into the in-flight list in one round trip. First (re)register the
-- consumer, so an in-flight list that gets messages always has an owner that others may reclaim:
-- a consumer deregistered while its heartbeat failed is registered again by its next fetch, and
-- under OOM that first write fails before anything moves.
-- KEYS: queue, inflight, attempts, delayed, consumers, heartbeat.
-- ARGV: count, consumer id, heartbeat ms, [a body BLMOVE already moved].
-- Returns {messages, attempts (empty when none was retried or put back; negative: redelivered),
-- seconds until the next retry is due or -1}.
-- uses: now, push, move_due
redis.call('SET', KEYS[6], 1, 'PX', ARGV[3])
redis.call('SADD', KEYS[5], ARGV[2])
local count = tonumber(ARGV[1])
local clock = now()
move_due(KEYS[1], KEYS[4], clock)
local items = {}
if count > 0 then items = redis.call('LRANGE', KEYS[1], 0, count - 1) end
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  push('RPUSH', KEYS[2], items)
end
if ARGV[4] then table.insert(items, 1, ARGV[4]) end
if #items == 0 then
  local nxt = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if nxt[2] then return {items, {}, tostring(tonumber(nxt[2]) - clock)} end
  return {items, {}, '-1'}
end
local attempts = {}
if redis.call('HLEN', KEYS[3]) > 0 then
  for i, body in ipairs(items) do
    attempts[i] = tonumber(redis.call('HGET', KEYS[3], redis.sha1hex(body)) or 1)
  end
end
return {items, attempts, '-1'}
