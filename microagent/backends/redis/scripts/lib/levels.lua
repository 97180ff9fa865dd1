-- Priority levels (a queue declared with priorities, keys.py): level 0 is the queue's own list,
-- where 1.x producers push; level n is the list levels[n] (Q:p{n}). While a message is in flight,
-- its level lives in its attempts entry, as sign * (attempt + LEVEL_UNIT * level): an ack or a dead
-- letter forgets it with the attempt. A consumer blocked on the queue's list (BLMOVE) is woken by a
-- marker pushed there when a level gets messages while the list is empty (so at most one marker
-- waits in it); fetches drop markers.
local LEVEL_UNIT = 1000000000
local WAKE = '\30MA-wake'
-- the signed attempt (negative: redelivered) and the level stored in an attempts entry
local function attempt_of(value)
  local v = tonumber(value or 1) or 1
  local a = math.abs(v)
  local level = math.floor(a / LEVEL_UNIT)
  a = a - level * LEVEL_UNIT
  if v < 0 then return -a, level end
  return a, level
end
local function level_of(attempts, message)
  if redis.call('HLEN', attempts) == 0 then return 0 end
  local _, level = attempt_of(redis.call('HGET', attempts, redis.sha1hex(message)))
  return level
end
local function wake(queue)
  if redis.call('LLEN', queue) == 0 then redis.call('RPUSH', queue, WAKE) end
end
-- the list of a level: levels[level], else (level 0, a level the caller does not know) the queue's
local function level_key(queue, levels, level)
  return (level > 0 and levels[level]) or queue
end
-- the level lists given as KEYS from position first on
local function levels_from(first)
  local levels = {}
  for i = first, #KEYS do levels[i - first + 1] = KEYS[i] end
  return levels
end
