-- Mark a message put back unsettled: its attempt number turns negative.
local function redelivered(attempts, message)
  local key = redis.sha1hex(message)
  local attempt = tonumber(redis.call('HGET', attempts, key) or 1)
  redis.call('HSET', attempts, key, -math.abs(attempt))
end
