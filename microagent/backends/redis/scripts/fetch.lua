-- Take up to ARGV[1] messages into the in-flight list in one round trip, bounded by bytes as well:
-- each message's size is looked at (in the server) before it moves, and the batch stops
-- before the message that would take it over ARGV[4] bytes (a larger one comes alone). A message
-- whose body is larger than ARGV[5] is not taken: it goes to the dead letters with a reason naming
-- its size and the limit, so no consumer ever reads it. First (re)register the consumer, so an
-- in-flight list that gets messages always has an owner that others may reclaim: a consumer
-- deregistered while its heartbeat failed is registered again by its next fetch, and under OOM
-- that first write fails before anything moves.
-- KEYS: queue, inflight, attempts, delayed, consumers, heartbeat, dead.
-- ARGV: count, consumer id, heartbeat ms, max batch bytes, max message size, queue name,
-- [the byte length of the message BLMOVE just moved to the tail of the in-flight list].
-- Returns {messages, attempts (empty when none was retried or put back; negative: redelivered),
-- seconds until the next retry is due or -1, how many were dead-lettered}.
-- uses: now, push, move_due, forget
redis.call('SET', KEYS[6], 1, 'PX', ARGV[3])
redis.call('SADD', KEYS[5], ARGV[2])
local count, budget, limit = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5])
local clock = now()
move_due(KEYS[1], KEYS[4], clock)

-- the body's size: a frame's bytes after its header line, a bare body whole
local function body_size(item)
  if string.sub(item, 1, 4) == '\30MA1' then
    local nl = string.find(item, '\n', 5, true)
    if nl then return #item - nl end
  end
  return #item
end

local dead = 0
local function bury(item, size)
  local attempts = 1
  if redis.call('HLEN', KEYS[3]) > 0 then
    attempts = tonumber(redis.call('HGET', KEYS[3], redis.sha1hex(item)) or 1)
  end
  local reason = 'Invalid payload for queue ' .. ARGV[6] .. ': message of ' .. size ..
    ' bytes exceeds ' .. limit .. ' (max_message_size; dead-lettered at fetch, unread)'
  local header = cjson.encode({reason = reason, attempts = math.abs(attempts), time = clock})
  redis.call('RPUSH', KEYS[7], header .. '\n' .. item)
  forget(KEYS[3], item)
  dead = dead + 1
end

local items, held, scanned = {}, 0, 0
if ARGV[7] then  -- the message BLMOVE moved: still the tail of our in-flight list
  local first = redis.call('LINDEX', KEYS[2], -1)
  if first and #first == tonumber(ARGV[7]) then
    scanned = #first
    local size = body_size(first)
    if size > limit then
      redis.call('RPOP', KEYS[2])
      bury(first, size)
    else
      items[1] = first
      held = #first
    end
  end
end
-- read the head of the queue a few at a time (LRANGE): few calls, and never more than CHUNK messages
-- beyond the batch in the script's memory; one LTRIM at the end removes what was taken or buried
local CHUNK = 32
local taken, pos, done = {}, 0, false
while not done do
  local want = math.min(count - #items, CHUNK)
  if want <= 0 or scanned >= budget then break end
  local chunk = redis.call('LRANGE', KEYS[1], pos, pos + want - 1)
  for _, item in ipairs(chunk) do
    if #items >= count or scanned >= budget then done = true break end
    local size = body_size(item)
    if size > limit then
      bury(item, size)
    elseif #items > 0 and held + #item > budget then
      done = true
      break
    else
      items[#items + 1] = item
      taken[#taken + 1] = item
      held = held + #item
    end
    pos = pos + 1
    scanned = scanned + #item
  end
  if #chunk < want then break end
end
if pos > 0 then redis.call('LTRIM', KEYS[1], pos, -1) end
if #taken > 0 then push('RPUSH', KEYS[2], taken) end
if #items == 0 then
  local nxt = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if nxt[2] then return {items, {}, tostring(tonumber(nxt[2]) - clock), dead} end
  return {items, {}, '-1', dead}
end
local attempts = {}
if redis.call('HLEN', KEYS[3]) > 0 then
  for i, body in ipairs(items) do
    attempts[i] = tonumber(redis.call('HGET', KEYS[3], redis.sha1hex(body)) or 1)
  end
end
return {items, attempts, '-1', dead}
