-- A member leaves: what is still pending in its name (read by a fetch cancelled on the way, or
-- not given back) becomes claimable by the others at once (its idle time set to the visibility
-- timeout); a consumer that holds nothing is deleted. KEYS: stream. ARGV: group, consumer,
-- visibility (ms). Returns how many entries it made claimable.
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 10000, ARGV[2])
if not ok then return 0 end
if #pending == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
for _, entry in ipairs(pending) do
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, entry[1], 'IDLE', ARGV[3], 'JUSTID')
end
return #pending
