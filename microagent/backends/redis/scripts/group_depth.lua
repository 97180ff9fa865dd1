-- A group's ready (its lag, due retries, expired leases), delayed (retries not due) and in-flight
-- (pending entries, held retries) counts. KEYS: stream, retry, held. ARGV: group.
-- uses: now_ms
local now = now_ms()
local ready, pending = 0, 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
  if ok then
    for _, group in ipairs(groups) do
      local info = {}
      for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
      if info['name'] == ARGV[1] then
        pending = tonumber(info['pending']) or 0
        if info['lag'] then
          ready = tonumber(info['lag'])
        else  -- unknown after deletions in the middle: count what follows the last delivered entry
          ready = #redis.call('XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+', 'COUNT', 100000)
        end
      end
    end
  end
end
ready = ready + redis.call('ZCOUNT', KEYS[2], '-inf', now) + redis.call('ZCOUNT', KEYS[3], '-inf', now)
local delayed = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
return {ready, delayed, pending + redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')}
