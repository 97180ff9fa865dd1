-- Take up to ARGV[1] messages into the in-flight list in one round trip, bounded by bytes as well:
-- each message's size is looked at (in the server) before it moves, and the batch stops
-- before the message that would take it over ARGV[4] bytes (a larger one comes alone). A message
-- whose body is larger than ARGV[5] is not taken: it goes to the dead letters with a reason naming
-- its size and the limit, so no consumer ever reads it. First (re)register the consumer, so an
-- in-flight list that gets messages always has an owner that others may reclaim: a consumer
-- deregistered while its heartbeat failed is registered again by its next fetch, and under OOM
-- that first write fails before anything moves.
-- A queue with priority levels takes from the highest level's list first, then the lower ones, the
-- queue's own list (level 0) last, and records each taken message's level in its attempts entry.
-- KEYS: queue, inflight, attempts, delayed, consumers, heartbeat, dead, then the lists of the
-- priority levels 1..n-1 of a queue that has them.
-- ARGV: count, consumer id, heartbeat ms, max batch bytes, max message size, queue name,
-- [the byte length of the message BLMOVE just moved to the tail of the in-flight list].
-- Returns {messages, attempts (empty when none was retried or put back; negative: redelivered),
-- seconds until the next retry is due or -1, how many were dead-lettered}.
-- uses: now, push, levels, move_due, forget
redis.call('SET', KEYS[6], 1, 'PX', ARGV[3])
redis.call('SADD', KEYS[5], ARGV[2])
local count, budget, limit = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5])
local clock = now()
local levels = levels_from(8)
move_due(KEYS[1], KEYS[4], clock, levels)

-- the body's size: a frame's bytes after its header line, a bare body whole
local function body_size(item)
  if string.sub(item, 1, 4) == '\30MA1' then
    local nl = string.find(item, '\n', 5, true)
    if nl then return #item - nl end
  end
  return #item
end

local dead = 0
local function bury(item, size, level)
  local attempts = 1
  if redis.call('HLEN', KEYS[3]) > 0 then
    attempts = attempt_of(redis.call('HGET', KEYS[3], redis.sha1hex(item)))
  end
  local reason = 'Invalid payload for queue ' .. ARGV[6] .. ': message of ' .. size ..
    ' bytes exceeds ' .. limit .. ' (max_message_size; dead-lettered at fetch, unread)'
  local priority = nil
  if level > 0 then priority = level end
  local header = cjson.encode({reason = reason, attempts = math.abs(attempts), time = clock, priority = priority})
  redis.call('RPUSH', KEYS[7], header .. '\n' .. item)
  forget(KEYS[3], item)
  dead = dead + 1
end

local items, held, scanned = {}, 0, 0
local function higher_waiting()
  for level = 1, #levels do
    if redis.call('LLEN', levels[level]) > 0 then return true end
  end
  return false
end
if ARGV[7] then  -- the message BLMOVE moved: still the tail of our in-flight list
  local first = redis.call('LINDEX', KEYS[2], -1)
  if first and first == WAKE then
    redis.call('RPOP', KEYS[2])  -- a marker woke us: nothing to hand out, the lists are read below
  elseif first and #first == tonumber(ARGV[7]) and #levels > 0 and higher_waiting() then
    redis.call('RPOP', KEYS[2])  -- level 0: back to the head of its list, the higher levels go first
    redis.call('LPUSH', KEYS[1], first)
  elseif first and #first == tonumber(ARGV[7]) then
    scanned = #first
    local size = body_size(first)
    if size > limit then
      redis.call('RPOP', KEYS[2])
      bury(first, size, 0)
    else
      items[1] = first
      held = #first
    end
  end
end
-- read the head of each list a few at a time (LRANGE): few calls, and never more than CHUNK messages
-- beyond the batch in the script's memory; one LTRIM per list removes what was taken or buried.
-- Returns true once the batch is complete (by count or bytes).
local CHUNK = 32
local leveled = {}  -- position in items -> its level, when above 0
local function take_from(list, level)
  local taken, pos, full = {}, 0, false
  while not full do
    local want = math.min(count - #items, CHUNK)
    if want <= 0 or scanned >= budget then full = true break end
    local chunk = redis.call('LRANGE', list, pos, pos + want - 1)
    for _, item in ipairs(chunk) do
      if #items >= count or scanned >= budget then full = true break end
      if item ~= WAKE then  -- a marker is dropped
        local size = body_size(item)
        if size > limit then
          bury(item, size, level)
        elseif #items > 0 and held + #item > budget then
          full = true
          break
        else
          items[#items + 1] = item
          taken[#taken + 1] = item
          held = held + #item
          if level > 0 then leveled[#items] = level end
        end
        scanned = scanned + #item
      end
      pos = pos + 1
    end
    if #chunk < want then break end
  end
  if pos > 0 then redis.call('LTRIM', list, pos, -1) end
  if #taken > 0 then push('RPUSH', KEYS[2], taken) end
  return full
end
local full = false
for level = #levels, 1, -1 do
  full = take_from(levels[level], level)
  if full then break end
end
if not full then take_from(KEYS[1], 0) end
if #items == 0 then
  local nxt = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if nxt[2] then return {items, {}, tostring(tonumber(nxt[2]) - clock), dead} end
  return {items, {}, '-1', dead}
end
local attempts = {}
local tracked = redis.call('HLEN', KEYS[3]) > 0
if tracked or next(leveled) then
  for i, body in ipairs(items) do
    local key = redis.sha1hex(body)
    local attempt, was = 1, 0
    if tracked then attempt, was = attempt_of(redis.call('HGET', KEYS[3], key)) end
    local level = leveled[i] or 0
    if level ~= was then  -- the level it was taken from, for a retry, release or dead letter
      local stored = math.abs(attempt) + LEVEL_UNIT * level
      if attempt < 0 then stored = -stored end
      redis.call('HSET', KEYS[3], key, string.format('%d', stored))
    end
    attempts[i] = attempt
  end
end
return {items, attempts, '-1', dead}
