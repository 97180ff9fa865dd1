-- A member leaves: its consumer is deleted from the group when it holds nothing (a consumer that
-- holds entries keeps them, for another member to claim). KEYS: stream. ARGV: group, consumer.
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if ok and #pending == 0 then redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) end
return 1
