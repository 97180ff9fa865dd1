-- Rate: take up to ARGV[3] grants of one rate limit (GCRA) on the server's clock, so processes
-- with skewed clocks share one limit. One key per call: safe on a Redis Cluster.
-- KEYS: the limit's key (its theoretical arrival time, microseconds; expires once in the past, so
-- a limit at rest holds no key). ARGV: interval (microseconds between grants, may be fractional),
-- burst, want (negative: give back -want grants taken and not used).
-- Returns {granted, microseconds until one grant is free when none was granted}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local stored = redis.call('GET', KEYS[1])
local tat = tonumber(stored or now)
if want < 0 then
  if stored then
    tat = tat + want * interval
    if tat > now then
      redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
    else
      redis.call('DEL', KEYS[1])
    end
  end
  return {0, 0}
end
local base = math.max(tat, now)
local room = math.floor((now + burst * interval - base) / interval + 1e-9)
local granted = math.min(want, room)
if granted <= 0 then
  return {0, math.ceil(base + interval - burst * interval - now)}
end
local new = base + granted * interval
redis.call('SET', KEYS[1], string.format('%.17g', new), 'PX', math.ceil((new - now) / 1000) + 1)
return {granted, 0}
