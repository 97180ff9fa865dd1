-- The server's clock in seconds: due times agree whatever the consumers' clocks say.
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
