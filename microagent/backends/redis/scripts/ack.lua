-- Forget handled messages. KEYS: inflight, attempts. ARGV: the bodies concatenated, their lengths
-- joined by commas (two arguments instead of one per message: packing is the client's hot cost).
-- Messages are mostly handled in the order they were taken, so they lead the in-flight list: that
-- prefix goes in one LTRIM, only the rest costs an LREM each.
local acked, order, start = {}, {}, 1
for size in string.gmatch(ARGV[2], '%d+') do
  local body = string.sub(ARGV[1], start, start + size - 1)
  start = start + size
  acked[body] = (acked[body] or 0) + 1
  order[#order + 1] = body
end
local removed = {}
local trim = 0
for _, body in ipairs(redis.call('LRANGE', KEYS[1], 0, #order - 1)) do
  local left = acked[body]
  if not left or left == 0 then break end
  acked[body] = left - 1
  trim = trim + 1
  removed[#removed + 1] = body
end
if trim > 0 then redis.call('LTRIM', KEYS[1], trim, -1) end
for _, body in ipairs(order) do
  if acked[body] > 0 then
    acked[body] = acked[body] - 1
    if redis.call('LREM', KEYS[1], 1, body) > 0 then removed[#removed + 1] = body end
  end
end
if redis.call('HLEN', KEYS[2]) > 0 then
  for _, body in ipairs(removed) do redis.call('HDEL', KEYS[2], redis.sha1hex(body)) end
end
return #order
