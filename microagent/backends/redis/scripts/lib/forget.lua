-- Drop a message's attempt count (the hash is left untouched while empty).
local function forget(attempts, body)
  if redis.call('HLEN', attempts) > 0 then redis.call('HDEL', attempts, redis.sha1hex(body)) end
end
