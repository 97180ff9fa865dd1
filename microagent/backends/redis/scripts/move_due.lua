-- Move due retries back to the queue (wakes a blocked consumer). KEYS: queue, delayed, then the
-- lists of the priority levels 1..n-1 of a queue that has them.
-- uses: now, push, levels, move_due
return move_due(KEYS[1], KEYS[2], now(), levels_from(3))
