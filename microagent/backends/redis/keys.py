"""Every Redis key name of the Redis backend, in one place (the Lua scripts in ``scripts/`` get them as KEYS).

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
``Q:dead``                  list    dead letters: a JSON line (reason, attempts, time, and a priority
                                    level above 0), ``\\n``, the message
``Q:p{n}``                  list    waiting messages of priority level ``n`` (1 to priorities - 1) of a
                                    queue declared with ``priorities``; level 0 is ``Q`` itself
==========================  ======  ==========================================================

Priority levels (``scripts/lib/levels.lua``): fetches take from ``Q:p{n}`` highest first, ``Q`` (where
1.x producers push: level 0) last. A taken message's level is kept in its ``Q:attempts`` entry (as
``attempt + 10**9 * level``, negative when redelivered), a delayed one's in its ``Q:delayed`` id
(``p`` and two digits), a dead letter's in its JSON line, so retries, releases, reclaims and requeues
put it back at its level. A consumer blocked on ``Q`` is woken by a marker pushed to ``Q`` (only
while ``Q`` is empty) when a level gets messages; fetches drop it, and lengths do not count it.

On a Redis Cluster every key a script touches must live in one slot: the other keys of ``Q`` are
then ``{Q}:inflight:{consumer}``, ``{Q}:dead`` and so on (``base_of``): the hash tag ``{Q}`` puts them
in the slot of the list ``Q`` itself, which keeps its 1.x name. A queue name that already holds a hash
tag (``jobs{eu}``) is used as it is, its tag decides the slot; a name whose slot no tag can follow
(a ``}`` without a tag before it, say ``a}b``) is refused on a cluster. One server keeps the plain
names above, so that a deployment's keys (dead letters first) do not move when it upgrades.

Signal groups (``groups.py``) have their own keys, ``GroupKeys`` below: a stream per signal with a
consumer group per group, and beside it, in its slot, each group's retries, held retries and dead letters.

Exchange bindings live in ``microagent:exchange:{name}`` (a hash: bound queue -> JSON list of its
topics, empty for every key), written when a queue is declared or consumed and read by ``publish``.

The attempt count lives beside the message, never in it, so a message is never rewritten: retries,
dead letters and requeues keep its headers and id. It is keyed by the stored bytes, unique per
message with frames; bare 1.x bodies that are identical share one count (and one redelivered mark).
Scripts use the server clock (``TIME``) for due times so consumers on skewed hosts agree.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from microagent.errors import InvalidArgument

#: a ``Q:delayed`` member is an id of this many characters, then the message (unique members for equal messages)
DELAYED_ID_LENGTH = 32


#: what ``scripts/lib/levels.lua`` pushes to ``Q`` to wake a consumer blocked on it (never a message)
WAKE_MARKER = '\x1eMA-wake'


def delayed_member(data: bytes, level: int = 0) -> bytes:
    """A unique ``Q:delayed`` member for the message: 32 characters of id (at a priority level above
    0: ``p``, the level in two digits, then 29), then the message."""
    if level:
        return b'p%02d' % level + uuid.uuid4().hex[3:].encode() + data
    return uuid.uuid4().hex.encode() + data


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
    #: the lists of priority levels 1..n-1 (none for a queue without ``priorities``)
    levels: tuple[str, ...] = ()

    @classmethod
    def of(cls, queue: str, consumer: str, cluster: bool = False, priorities: int | None = None) -> QueueKeys:
        base = base_of(queue, cluster)
        levels = tuple(level_key(base, level) for level in range(1, priorities or 1))
        return cls(queue=queue, inflight=_inflight(base, consumer), heartbeat=_heartbeat(base, consumer),
                   consumers=f'{base}:consumers', delayed=f'{base}:delayed', attempts=f'{base}:attempts',
                   dead=f'{base}:dead', base=base, levels=levels)

    def level(self, level: int) -> str:
        """The list of a priority level: ``Q`` itself for 0."""
        return self.levels[level - 1] if level else self.queue

    def inflight_of(self, consumer: str) -> str:
        return _inflight(self.base, consumer)

    def heartbeat_of(self, consumer: str) -> str:
        return _heartbeat(self.base, consumer)


def level_key(base: str, level: int) -> str:
    """The list of priority level ``level`` (>= 1) of the queue whose keys start with ``base``."""
    return f'{base}:p{level}'


def exchange_key(exchange: str) -> str:
    """The hash of an exchange's bindings (bound queue -> JSON list of its topics)."""
    return f'microagent:exchange:{exchange}'


def inflight_key(queue: str, consumer: str, cluster: bool = False) -> str:
    return _inflight(base_of(queue, cluster), consumer)


def heartbeat_key(queue: str, consumer: str, cluster: bool = False) -> str:
    return _heartbeat(base_of(queue, cluster), consumer)


def _inflight(base: str, consumer: str) -> str:
    return f'{base}:inflight:{consumer}'


def _heartbeat(base: str, consumer: str) -> str:
    return f'{base}:consumer:{consumer}'


# signal groups (``groups.py``)


def group_stream(prefix: str, signal: str) -> str:
    """The stream of a signal that has groups, one per bus prefix: ``microagent:signal:{prefix}:{signal}``."""
    return f'microagent:signal:{prefix}:{signal}'


def group_registry(prefix: str) -> str:
    """The hash of a prefix's groups: store name (``signal@group``) -> JSON retention the members asked for."""
    return f'microagent:groups:{prefix}'


def group_channel(prefix: str) -> str:
    """Where a joining group tells the buses of its prefix: ``{prefix}:~groups`` (no signal channel
    ``{prefix}:{name}:...`` can be it: ``~`` is in no signal name)."""
    return f'{prefix}:~groups'


@dataclass(frozen=True)
class GroupKeys:
    """Key names of one group's store: the signal's stream (its consumer group is the group) and,
    in the stream's slot, the group's retries (zset, by due time), the retries its members hold
    (zset, by the deadline of each member's lease) and its dead letters (list, as ``Q:dead``)."""

    stream: str
    retry: str
    held: str
    dead: str
    group: str

    @classmethod
    def of(cls, prefix: str, signal: str, group: str, cluster: bool = False) -> GroupKeys:
        stream = group_stream(prefix, signal)
        base = base_of(stream, cluster)
        return cls(stream=stream, retry=f'{base}:retry:{group}', held=f'{base}:held:{group}',
                   dead=f'{base}:dead:{group}', group=group)
