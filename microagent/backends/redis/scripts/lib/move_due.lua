-- Move retries and delayed sends that are due back to the queue, 1000 at a time. A member is an id
-- of keys.DELAYED_ID_LENGTH characters, then the message: the loader writes where the message
-- starts in place of the name below. An id that starts with 'p' and two digits names a priority
-- level (keys.delayed_member): the message goes back to that level's list (levels, from
-- levels_from). Needs now, push and levels before it.
local function move_due(queue, delayed, clock, levels)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', clock, 'LIMIT', 0, 1000)
  if #due == 0 then return 0 end
  local lists, order = {}, {}
  for _, member in ipairs(due) do
    local key = queue
    if string.byte(member, 1) == 112 then key = level_key(queue, levels, tonumber(string.sub(member, 2, 3))) end
    if not lists[key] then
      lists[key] = {}
      order[#order + 1] = key
    end
    local bodies = lists[key]
    bodies[#bodies + 1] = string.sub(member, DELAYED_ID_END)
  end
  local leveled = false
  for _, key in ipairs(order) do
    if key ~= queue then leveled = true end
    push('RPUSH', key, lists[key])
  end
  if leveled then wake(queue) end
  for i = 1, #due, 1000 do redis.call('ZREM', delayed, unpack(due, i, math.min(i + 999, #due))) end
  return #due
end
