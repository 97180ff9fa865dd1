-- Send fresh messages with a delay: due at the server's clock + ARGV[1] s. KEYS: delayed.
-- ARGV: delay seconds, then one member (a unique 32-char id + the body) per message.
-- uses: now
local due = now() + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], due, ARGV[i]) end
return #ARGV - 1
