"""Every Redis key name and Lua script of the Redis broker, in one place.

For a queue ``Q`` (the plain Redis list a 1.x agent RPUSHes to and BLPOPs from). A "message" below
is the bytes stored: the envelope frame of ``message.frame`` (which holds the message id), or with
``wire='1.x'`` (and from 1.x producers) the bare JSON body exactly as 1.x writes it.

==========================  ======  ==========================================================
``Q``                       list    waiting messages
``Q:inflight:{consumer}``   list    messages a consumer has taken and not settled yet
``Q:consumer:{consumer}``   string  the consumer's heartbeat; expires when the process dies
``Q:consumers``             set     consumer ids that may own an in-flight list (each fetch adds its own)
``Q:delayed``               zset    retries and delayed sends, by due time; member = 32-char id + message
``Q:attempts``              hash    sha1(message) -> attempt number; negative: put back unsettled
                                    (released, or reclaimed from a dead consumer), i.e. redelivered
``Q:dead``                  list    dead letters: a JSON line (reason, attempts, time), ``\\n``, the message
==========================  ======  ==========================================================

On a Redis Cluster every key a script touches must live in one slot: the other keys of ``Q`` are
then ``{Q}:inflight:{consumer}``, ``{Q}:dead`` and so on (``base_of``): the hash tag ``{Q}`` puts them
in the slot of the list ``Q`` itself, which keeps its 1.x name. A queue name that already holds a hash
tag (``jobs{eu}``) is used as it is, its tag decides the slot; a name whose slot no tag can follow
(a ``}`` without a tag before it, say ``a}b``) is refused on a cluster. One server keeps the plain
names above, so that a deployment's keys (dead letters first) do not move when it upgrades.

Exchange bindings live in ``microagent:exchange:{name}`` (a hash: bound queue -> JSON list of its
topics, empty for every key), written when a queue is declared or consumed and read by ``publish``.

The attempt count lives beside the message, never in it, so a message is never rewritten: retries,
dead letters and requeues keep its headers and id. It is keyed by the stored bytes, unique per
message with frames; bare 1.x bodies that are identical share one count (and one redelivered mark).
Scripts use the server clock (``TIME``) for due times so consumers on skewed hosts agree.
"""
from __future__ import annotations

from dataclasses import dataclass

from microagent.errors import InvalidArgument

DELAYED_ID_LENGTH = 32


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes when it is not the whole key (the first ``{...}``
    with something inside), as Redis defines it; None when the whole key is hashed."""
    start = key.find('{')
    if start < 0:
        return None
    end = key.find('}', start + 1)
    return key[start + 1:end] if end > start + 1 else None


def base_of(queue: str, cluster: bool = False) -> str:
    """What the other keys of ``queue`` start with: the name itself on one server; on a cluster a
    prefix in the slot of the list ``queue`` (``{queue}``, or the name if it has a hash tag)."""
    if not cluster or hash_tag(queue) is not None:
        return queue
    if not queue or '}' in queue:
        raise InvalidArgument(f'queue name {queue!r} cannot be used on a Redis Cluster: no hash tag puts its other '
                              "keys in the slot of its list (a '}' with no '{' before it); rename it, or give it "
                              "a tag of its own such as 'name{tag}'")
    return '{' + queue + '}'


@dataclass(frozen=True)
class QueueKeys:
    """Key names of one queue as seen by one consumer."""

    queue: str
    inflight: str
    heartbeat: str
    consumers: str
    delayed: str
    attempts: str
    dead: str
    base: str

    @classmethod
    def of(cls, queue: str, consumer: str, cluster: bool = False) -> QueueKeys:
        base = base_of(queue, cluster)
        return cls(queue=queue, inflight=f'{base}:inflight:{consumer}', heartbeat=f'{base}:consumer:{consumer}',
                   consumers=f'{base}:consumers', delayed=f'{base}:delayed', attempts=f'{base}:attempts',
                   dead=f'{base}:dead', base=base)

    def inflight_of(self, consumer: str) -> str:
        return f'{self.base}:inflight:{consumer}'

    def heartbeat_of(self, consumer: str) -> str:
        return f'{self.base}:consumer:{consumer}'


def exchange_key(exchange: str) -> str:
    return f'microagent:exchange:{exchange}'


def inflight_key(queue: str, consumer: str, cluster: bool = False) -> str:
    return f'{base_of(queue, cluster)}:inflight:{consumer}'


def heartbeat_key(queue: str, consumer: str, cluster: bool = False) -> str:
    return f'{base_of(queue, cluster)}:consumer:{consumer}'


_NOW = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

_PUSH = """
local function push(cmd, key, items)
  for i = 1, #items, 1000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 999, #items)))
  end
end
"""

_FORGET = """
local function forget(attempts, body)
  if redis.call('HLEN', attempts) > 0 then redis.call('HDEL', attempts, redis.sha1hex(body)) end
end
"""

_REDELIVERED = """
local function redelivered(attempts, message)
  local key = redis.sha1hex(message)
  local attempt = tonumber(redis.call('HGET', attempts, key) or 1)
  redis.call('HSET', attempts, key, -math.abs(attempt))
end
"""

_MOVE_DUE = """
local function move_due(queue, delayed, clock)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', clock, 'LIMIT', 0, 1000)
  if #due == 0 then return 0 end
  local bodies = {}
  for i, member in ipairs(due) do bodies[i] = string.sub(member, ID_END) end
  push('RPUSH', queue, bodies)
  for i = 1, #due, 1000 do redis.call('ZREM', delayed, unpack(due, i, math.min(i + 999, #due))) end
  return #due
end
""".replace('ID_END', str(DELAYED_ID_LENGTH + 1))

# Move due retries back to the queue (wakes a blocked consumer). KEYS: queue, delayed.
MOVE_DUE = _NOW + _PUSH + _MOVE_DUE + """
return move_due(KEYS[1], KEYS[2], now())
"""

# Beat: renew the heartbeat, register the consumer; 1 if it was not registered (taken for dead).
# KEYS: heartbeat, consumers. ARGV: heartbeat ms, consumer id.
BEAT = """
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
return redis.call('SADD', KEYS[2], ARGV[2])
"""

# Take up to ARGV[1] messages into the in-flight list in one round trip. First (re)register the
# consumer, so an in-flight list that gets messages always has an owner that others may reclaim:
# a consumer deregistered while its heartbeat failed is registered again by its next fetch, and
# under OOM that first write fails before anything moves.
# KEYS: queue, inflight, attempts, delayed, consumers, heartbeat.
# ARGV: count, consumer id, heartbeat ms, [a body BLMOVE already moved].
# Returns {messages, attempts (empty when none was retried or put back; negative: redelivered),
# seconds until the next retry is due or -1}.
FETCH = _NOW + _PUSH + _MOVE_DUE + """
redis.call('SET', KEYS[6], 1, 'PX', ARGV[3])
redis.call('SADD', KEYS[5], ARGV[2])
local count = tonumber(ARGV[1])
local clock = now()
move_due(KEYS[1], KEYS[4], clock)
local items = {}
if count > 0 then items = redis.call('LRANGE', KEYS[1], 0, count - 1) end
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  push('RPUSH', KEYS[2], items)
end
if ARGV[4] then table.insert(items, 1, ARGV[4]) end
if #items == 0 then
  local nxt = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if nxt[2] then return {items, {}, tostring(tonumber(nxt[2]) - clock)} end
  return {items, {}, '-1'}
end
local attempts = {}
if redis.call('HLEN', KEYS[3]) > 0 then
  for i, body in ipairs(items) do
    attempts[i] = tonumber(redis.call('HGET', KEYS[3], redis.sha1hex(body)) or 1)
  end
end
return {items, attempts, '-1'}
"""

# Forget handled messages. KEYS: inflight, attempts. ARGV: the bodies concatenated, their lengths
# joined by commas (two arguments instead of one per message: packing is the client's hot cost).
# Messages are mostly handled in the order they were taken, so they lead the in-flight list: that
# prefix goes in one LTRIM, only the rest costs an LREM each.
ACK = """
local acked, order, start = {}, {}, 1
for size in string.gmatch(ARGV[2], '%d+') do
  local body = string.sub(ARGV[1], start, start + size - 1)
  start = start + size
  acked[body] = (acked[body] or 0) + 1
  order[#order + 1] = body
end
local removed = {}
local trim = 0
for _, body in ipairs(redis.call('LRANGE', KEYS[1], 0, #order - 1)) do
  local left = acked[body]
  if not left or left == 0 then break end
  acked[body] = left - 1
  trim = trim + 1
  removed[#removed + 1] = body
end
if trim > 0 then redis.call('LTRIM', KEYS[1], trim, -1) end
for _, body in ipairs(order) do
  if acked[body] > 0 then
    acked[body] = acked[body] - 1
    if redis.call('LREM', KEYS[1], 1, body) > 0 then removed[#removed + 1] = body end
  end
end
if redis.call('HLEN', KEYS[2]) > 0 then
  for _, body in ipairs(removed) do redis.call('HDEL', KEYS[2], redis.sha1hex(body)) end
end
return #order
"""

# Schedule a retry, only if this consumer still owns the message (else it was reclaimed and
# will be delivered again anyway). KEYS: inflight, delayed, attempts.
# ARGV: body, delay seconds, a unique 32-char id, the next attempt number.
RETRY = _NOW + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], now() + tonumber(ARGV[2]), ARGV[3] .. ARGV[1])
redis.call('HSET', KEYS[3], redis.sha1hex(ARGV[1]), ARGV[4])
return 1
"""

# Send fresh messages with a delay: due at the server's clock + ARGV[1] s. KEYS: delayed.
# ARGV: delay seconds, then one member (a unique 32-char id + the body) per message.
DELAY = _NOW + """
local due = now() + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], due, ARGV[i]) end
return #ARGV - 1
"""

# Dead-letter an owned message. KEYS: inflight, dead, attempts. ARGV: body, JSON header.
DEAD_LETTER = _FORGET + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2] .. '\\n' .. ARGV[1])
forget(KEYS[3], ARGV[1])
return 1
"""

# Put owned messages back at the head of the queue, in their order, marked redelivered.
# KEYS: inflight, queue, attempts. ARGV: messages.
RELEASE = _REDELIVERED + """
local n = 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('LPUSH', KEYS[2], ARGV[i])
    redelivered(KEYS[3], ARGV[i])
    n = n + 1
  end
end
return n
"""

# Return the in-flight messages of consumers whose heartbeat expired, marked redelivered.
# KEYS: consumers set, queue, attempts, then (heartbeat, inflight) per candidate. ARGV: candidate ids.
# Also used for a consumer's own list on close, after deleting its heartbeat.
RECLAIM = _REDELIVERED + """
local n = 0
for i, id in ipairs(ARGV) do
  local heartbeat, inflight = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  if redis.call('EXISTS', heartbeat) == 0 then
    while true do
      local message = redis.call('LMOVE', inflight, KEYS[2], 'RIGHT', 'LEFT')
      if not message then break end
      redelivered(KEYS[3], message)
      n = n + 1
    end
    redis.call('SREM', KEYS[1], id)
  end
end
return n
"""

# Move up to ARGV[1] dead letters back to the queue as fresh messages. KEYS: dead, queue.
# KEYS: Q:dead, Q; ARGV: '1' to requeue (else '0'), then the exact dead-letter entries to remove.
# Each entry is removed once (LREM from the oldest): one that another client removed meanwhile is skipped.
REMOVE_DEAD = """
local n = 0
for i = 2, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    if ARGV[1] == '1' then
      local cut = string.find(ARGV[i], '\\n', 1, true)
      redis.call('RPUSH', KEYS[2], string.sub(ARGV[i], cut + 1))
    end
    n = n + 1
  end
end
return n
"""

REQUEUE = """
local n = 0
for _ = 1, tonumber(ARGV[1]) do
  local entry = redis.call('LPOP', KEYS[1])
  if not entry then break end
  local cut = string.find(entry, '\\n', 1, true)
  redis.call('RPUSH', KEYS[2], string.sub(entry, cut + 1))
  n = n + 1
end
return n
"""
