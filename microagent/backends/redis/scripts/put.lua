-- Send messages at a priority level above 0. KEYS: the level's list, the queue's list (level 0).
-- ARGV: the messages. Wakes a consumer blocked on the queue's list.
-- uses: push, levels
push('RPUSH', KEYS[1], ARGV)
wake(KEYS[2])
return #ARGV
