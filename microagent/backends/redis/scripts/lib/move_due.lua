-- Move retries and delayed sends that are due back to the queue, 1000 at a time. A member is an id
-- of keys.DELAYED_ID_LENGTH characters, then the message: the loader writes where the message
-- starts in place of the name below. Needs now and push before it.
local function move_due(queue, delayed, clock)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', clock, 'LIMIT', 0, 1000)
  if #due == 0 then return 0 end
  local bodies = {}
  for i, member in ipairs(due) do bodies[i] = string.sub(member, DELAYED_ID_END) end
  push('RPUSH', queue, bodies)
  for i = 1, #due, 1000 do redis.call('ZREM', delayed, unpack(due, i, math.min(i + 999, #due))) end
  return #due
end
