-- Settle what a member holds, other than by a plain ack: retry it later, release it (due now) or
-- dead-letter it. KEYS: stream, retry, held, dead. ARGV: group, 'retry', 'release' or 'dead', the
-- retry delay (ms), then for each signal: 's' (a stream entry id) or 'z' (a held member), the id or
-- member, the retry member or dead letter. Returns how many were still held (the others: settled already).
-- uses: now_ms
local score = 0
if ARGV[2] == 'retry' then score = now_ms() + tonumber(ARGV[3]) end
local n = 0
for i = 4, #ARGV, 3 do
  local held
  if ARGV[i] == 's' then
    held = redis.call('XACK', KEYS[1], ARGV[1], ARGV[i + 1]) == 1
  else
    held = redis.call('ZREM', KEYS[3], ARGV[i + 1]) == 1
  end
  if held then
    if ARGV[2] == 'dead' then
      redis.call('RPUSH', KEYS[4], ARGV[i + 2])
    else
      redis.call('ZADD', KEYS[2], score, ARGV[i + 2])
    end
    n = n + 1
  end
end
return n
