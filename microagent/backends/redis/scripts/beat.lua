-- Beat: renew the heartbeat, register the consumer; 1 if it was not registered (taken for dead).
-- KEYS: heartbeat, consumers. ARGV: heartbeat ms, consumer id.
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
return redis.call('SADD', KEYS[2], ARGV[2])
