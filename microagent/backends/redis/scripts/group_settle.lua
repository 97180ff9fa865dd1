-- Settle what a member holds, other than by a plain ack: retry it later, release it (due now) or
-- dead-letter it. KEYS: stream, retry, held, dead. ARGV: group, 's' (a stream entry id) or 'z' (a
-- held member), the id or member, 'retry', 'release' or 'dead', the retry member or dead letter,
-- the retry delay (ms). Returns 0 when it was no longer held (settled already), else 1.
-- uses: now_ms
local gone
if ARGV[2] == 's' then
  gone = redis.call('XACK', KEYS[1], ARGV[1], ARGV[3]) == 0
else
  gone = redis.call('ZREM', KEYS[3], ARGV[3]) == 0
end
if gone then return 0 end
if ARGV[4] == 'dead' then
  redis.call('RPUSH', KEYS[4], ARGV[5])
elseif ARGV[4] == 'retry' then
  redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[6]), ARGV[5])
else
  redis.call('ZADD', KEYS[2], 0, ARGV[5])
end
return 1
