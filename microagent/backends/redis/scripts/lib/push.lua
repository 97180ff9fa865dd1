-- RPUSH or LPUSH a table of items, 1000 per call (Lua's unpack has a stack limit).
local function push(cmd, key, items)
  for i = 1, #items, 1000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 999, #items)))
  end
end
