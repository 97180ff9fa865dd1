-- Move due retries back to the queue (wakes a blocked consumer). KEYS: queue, delayed.
-- uses: now, push, move_due
return move_due(KEYS[1], KEYS[2], now())
