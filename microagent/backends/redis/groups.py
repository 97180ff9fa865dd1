"""Signal groups on Redis streams: the group transport (``microagent.groups`` says what one is).

A signal some group receives has a stream (``keys.GroupKeys``), which the bus appends to on every
send (``registry.py``); each group is a consumer group of that stream, each member a consumer
named by its transport's uid. The engine's operations map onto it so:

* ``declare`` (join): ``XGROUP CREATE`` at ``$`` (``start='now'``) or ``0`` (``'first'``: all the
  stream retains), ``MKSTREAM``; then the retention asked for goes to the registry and the buses.
* ``fetch``: ``XREADGROUP ... >``, blocking; now and then (every ``visibility_timeout / 4``, at
  most every ``claim_interval`` s (1), and when a retry of ours is due) a script takes first the
  group's due retries, the held retries of members that died, and with ``XAUTOCLAIM`` the entries
  pending longer than the visibility timeout (a dead member's; delivered as ``redelivered``).
* ``ack``: ``XACK`` (or ``ZREM`` of a held retry), a few milliseconds of them in one round trip.
* ``retry``: ``XACK`` and the entry, with its attempt, into the group's retry zset by due time;
  a member takes a due retry into the held zset, whose score is its lease's deadline.
* ``release``: as a retry due at once, marked redelivered, its attempt unchanged.
* ``dead_letter``: ``XACK`` and ``RPUSH`` to the group's dead letters, as ``Q:dead`` (a JSON line
  with reason, attempts, time and sender; then the stored frame).
* A live member keeps what it holds: every ``visibility_timeout / 3`` it resets the idle time of
  its pending entries (``XCLAIM ... JUSTID``, only those still its own) and extends its leases.

Entries and zset members (``group_entries.py`` says what they hold) are read as untrusted: one
that is not what this module writes is handed to the engine as an invalid message, which
dead-letters it with the reason.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import msgspec
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from microagent.backends.redis import registry
from microagent.backends.redis.client import Client, client
from microagent.backends.redis.frame import FrameError
from microagent.backends.redis.group_entries import (
    ID,
    Held,
    Invalid,
    dead_letter,
    retry_member,
    senders,
    unparsed,
)
from microagent.backends.redis.group_entries import sender as read_sender
from microagent.backends.redis.keys import GroupKeys, group_channel, group_registry
from microagent.backends.redis.scripts import GROUP_SCRIPTS
from microagent.backends.redis.wire import read_frame
from microagent.errors import InvalidArgument, InvalidPayload, UsageError
from microagent.groups import SENDER, GroupOptions, GroupQueue, split_store_name
from microagent.message import Envelope
from microagent.queue import Queue
from microagent.transport import DeadLetter, Delivery, QueueDepth, SelectDeadLetter

__all__ = ['GroupingBus', 'RedisGroupTransport']

T = TypeVar('T')


@dataclass
class _Store:
    """One group this member consumes: its keys and what it holds."""

    keys: GroupKeys
    target: str
    visibility_ms: int
    claim_every: float
    held: dict[bytes, Held] = field(default_factory=dict)  # token key -> token
    acks: list[Held] = field(default_factory=list)
    flushing: asyncio.Task[None] | None = None
    next_claim: float = 0.0
    cursor: bytes = b'0-0'
    claims: int = 0


class GroupingBus(Protocol):
    """What the group transport uses of its bus transport (``bus.RedisBusTransport``)."""

    dsn: str
    prefix: str
    log: logging.Logger
    redis: Client
    redis_options: dict[str, Any]

    def group_joined(self, store: str, options: GroupOptions) -> None: ...


class RedisGroupTransport:
    """The stores of signal groups on Redis streams (``BrokerTransport`` over ``GroupQueue``s),
    sharing its bus's command client; blocking reads have a client of their own."""

    fetch_cancel_safe = True  # an entry read by a cancelled XREADGROUP stays pending, claimed later
    send_options: frozenset[str] = frozenset()
    unsettled_fate = ('it stays pending in its group, and another member (or this one) takes it once the '
                      'visibility timeout has passed')
    #: how long a read may take beyond its blocking time before the connection is deemed dead
    read_margin: float = 5.0
    #: acks are sent together, at most this many seconds after the first of them
    ack_delay: float = 0.002
    #: the longest time (s) between two claims of due retries (also those requeued or released by
    #: other processes) and of dead members' entries: one small script per interval and receiver
    claim_interval: float = 1.0
    #: every this many claims, the group's consumers that hold nothing and were idle a minute are deleted
    prune_every: int = 60
    #: how long ``close`` may take to send acks before it closes its client anyway
    close_timeout: float = 5.0

    def __init__(self, bus: GroupingBus) -> None:
        self.bus = bus
        self.dsn = bus.dsn
        self.prefix = bus.prefix
        self.log = bus.log
        self.redis = bus.redis
        self.cluster = isinstance(self.redis, RedisCluster)
        self.uid = uuid.uuid4().hex  # this member's consumer name in every group it joins
        self._blocking = client(bus.dsn, bus.redis_options, reader=True)
        # replies as Redis sends them: _entry reads each entry's fields list, with no dict made by redis-py
        self._blocking.set_response_callback('XREADGROUP', unparsed)
        self._scripts = {name: self.redis.register_script(text) for name, text in GROUP_SCRIPTS.items()}
        self._stores: dict[str, _Store] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.bus!r}>'

    def _keys(self, name: str) -> GroupKeys:
        signal, group = split_store_name(name)
        return GroupKeys.of(self.prefix, signal, group, self.cluster)

    # joining

    async def declare(self, queue: Queue[Any]) -> None:
        if not isinstance(queue, GroupQueue):
            raise UsageError(f'{self!r} keeps signal groups, not queue {queue.name!r}')
        keys = self._keys(queue.name)
        await self._create_group(keys, '0' if queue.start == 'first' else '$')
        value = registry.encode(queue.name, queue.options)
        await self.redis.hset(group_registry(self.prefix), queue.name, value)
        await self.redis.publish(group_channel(self.prefix), value)
        self.bus.group_joined(queue.name, queue.options)
        visibility = queue.options.visibility_timeout
        self._stores[queue.name] = _Store(keys, f'signal {queue.signal.name!r} in group {queue.group!r}',
                                          max(1, int(visibility * 1000)), min(visibility / 4, self.claim_interval))
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh(), name=f'redis-group-refresh:{self.prefix}')

    async def _create_group(self, keys: GroupKeys, start: str) -> None:
        try:
            await self.redis.xgroup_create(keys.stream, keys.group, id=start, mkstream=True)
        except ResponseError as exc:
            if 'BUSYGROUP' not in str(exc):
                raise

    async def consume(self, queue: Queue[Any], concurrency: int) -> None:
        """Nothing to set up: a member pulls."""

    async def put(self, queue: Queue[Any], envelopes: Sequence[Envelope], *, delay: float = 0.0,
                  **options: Any) -> None:
        raise UsageError(f'{queue.name!r}: a group store is filled by sending its signal, not by put')

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> int:
        raise UsageError('a group transport has no exchanges')

    # taking

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery[Held]]:
        store = self._stores[queue.name]
        loop = asyncio.get_running_loop()
        if loop.time() >= store.next_claim:
            taken = await self._claim(store, count)
            if taken:
                return taken
        block = max(1, int(min(timeout, store.next_claim - loop.time()) * 1000))
        keys = store.keys
        try:
            async with asyncio.timeout(block / 1000 + self.read_margin):
                reply = await self._blocking.xreadgroup(keys.group, self.uid, {keys.stream: '>'}, count=count,
                                                        block=block)
        except ResponseError as exc:
            if 'NOGROUP' not in str(exc):
                raise
            self.log.warning('Group store %s: the stream or its group is gone; joining again from now',
                             queue.name)
            await self._create_group(keys, '$')
            return []
        if not reply:
            return []
        entries = reply[0][1] if isinstance(reply, list) else next(iter(cast(dict[Any, Any], reply).values()))
        entry = self._entry
        return [entry(store, item[0], item[1], False) for item in entries]

    async def _claim(self, store: _Store, count: int) -> list[Delivery[Held]]:
        """Due retries, leases of dead members and entries idle past the visibility timeout."""
        keys = store.keys
        loop = asyncio.get_running_loop()
        store.claims += 1
        prune = '1' if store.claims % self.prune_every == 1 else '0'
        taken, expired, entries, cursor, wait = await self._scripts['GROUP_CLAIM'](
            keys=[keys.stream, keys.retry, keys.held],
            args=[keys.group, self.uid, store.visibility_ms, count, store.cursor, prune])
        store.cursor = cursor
        store.next_claim = loop.time() + store.claim_every
        if int(wait) >= 0:
            store.next_claim = min(store.next_claim, loop.time() + int(wait) / 1000)
        deliveries = [self._member(store, member, bool(late)) for member, late in zip(taken, expired, strict=True)]
        for entry in entries:
            if isinstance(entry, list) and len(entry) == 2:
                deliveries.append(self._entry(store, entry[0], entry[1], True))
        return deliveries

    def _entry(self, store: _Store, entry_id: bytes, fields: Any, redelivered: bool) -> Delivery[Held]:
        """The delivery of a stream entry: its fields as Redis lists them, ``d`` (the frame) and
        ``s`` (the sender), in that order when this module wrote them."""
        if type(fields) is list and len(fields) == 4 and fields[0] == b'd' and fields[2] == b's':
            data, raw_sender = fields[1], fields[3]
        else:
            pairs = dict(zip(fields[::2], fields[1::2], strict=False)) if isinstance(fields, list) else {}
            data, raw_sender = pairs.get(b'd'), pairs.get(b's', b'')
        token = Held('s', entry_id, data if isinstance(data, bytes) else b'', '', 1)
        store.held[entry_id] = token
        if not isinstance(data, bytes):
            return self._delivery(store, token, 'a stream entry without its data field (d)', redelivered)
        known = senders.get(raw_sender)
        if known is not None:  # the hot path: a sender seen before
            token.sender = known[0]
            try:
                return Delivery(read_frame(data, store.target), token, 1, redelivered, known[1])
            except FrameError as exc:
                return Invalid(token, exc, redelivered)
        try:
            token.sender = read_sender(raw_sender)
        except ValueError as exc:
            return self._delivery(store, token, str(exc), redelivered)
        return self._delivery(store, token, None, redelivered)

    def _member(self, store: _Store, member: bytes, expired: bool) -> Delivery[Held]:
        """The delivery of a held retry member: the holder's 32 characters, then the retry member."""
        token = Held('z', member, b'', '', 1)
        store.held[member] = token
        problem, redelivered = None, expired
        try:
            head, newline, token.data = member[2 * ID:].partition(b'\n')
            attempt, flag, sender = head.split(b'|', 2)
            if not newline or len(member) < 2 * ID:
                raise InvalidArgument('a retry without its header line')
            token.attempt = int(attempt)
            if not 1 <= token.attempt <= 1_000_000:
                raise InvalidArgument(f'attempt {token.attempt} out of range')
            token.sender = read_sender(sender)
            redelivered = redelivered or flag == b'1'
        except ValueError as exc:
            problem = f'a malformed retry: {exc}'
        return self._delivery(store, token, problem, redelivered)

    def _delivery(self, store: _Store, token: Held, problem: str | None, redelivered: bool) -> Delivery[Held]:
        if problem is None:
            try:
                known = senders.get(token.sender.encode())
                context = known[1] if known is not None else {SENDER: token.sender}
                return Delivery(read_frame(token.data, store.target), token, token.attempt, redelivered, context)
            except FrameError as exc:
                return Invalid(token, exc, redelivered)
        return Invalid(token, InvalidPayload(store.target, [problem]), redelivered)

    # settling

    async def ack(self, queue: Queue[Any], delivery: Delivery[Held]) -> None:
        """Acks of ``ack_delay`` seconds go in one round trip, in the background. Until sent, the
        entry stays pending: a crash redelivers it; a failed send leaves it to be claimed."""
        store = self._stores[queue.name]
        token = delivery.token
        store.held.pop(token.key, None)
        store.acks.append(token)
        if store.flushing is None:
            store.flushing = self._spawn(self._flush_acks(store))

    async def _flush_acks(self, store: _Store) -> None:
        await asyncio.sleep(self.ack_delay)
        tokens, store.acks, store.flushing = store.acks, [], None
        keys = store.keys
        ids = [token.key for token in tokens if token.kind == 's']
        members = [token.key for token in tokens if token.kind == 'z']
        try:
            if ids:
                await self.redis.xack(keys.stream, keys.group, *ids)
            if members:
                await self.redis.zrem(keys.held, *members)
        except Exception as exc:
            self.log.warning('Group %s of %s: %d acks failed (%s: %s); those signals will be delivered again '
                             'after the visibility timeout', keys.group, keys.stream, len(tokens),
                             type(exc).__name__, exc)

    async def retry(self, queue: Queue[Any], delivery: Delivery[Held], delay: float, reason: str) -> None:
        token = delivery.token
        await self._settle(queue, 'retry', [(token, retry_member(token, delivery.attempt + 1, False))], delay)
        store = self._stores.get(queue.name)
        if store is not None:  # take it when due, rather than at the next periodic claim
            store.next_claim = min(store.next_claim, asyncio.get_running_loop().time() + delay)

    async def dead_letter(self, queue: Queue[Any], delivery: Delivery[Held], reason: str) -> None:
        token = delivery.token
        line = msgspec.json.encode({'reason': reason, 'attempts': delivery.attempt, 'time': time.time(),
                                    'sender': token.sender})
        await self._settle(queue, 'dead', [(token, line + b'\n' + token.data)], 0.0)

    async def release(self, queue: Queue[Any], deliveries: Sequence[Delivery[Held]]) -> None:
        """Back to the group at once, in one round trip, marked redelivered, their attempts unchanged."""
        if deliveries:
            await self._settle(queue, 'release', [(d.token, retry_member(d.token, d.attempt, True))
                                                  for d in deliveries], 0.0)

    async def _settle(self, queue: Queue[Any], action: str, items: list[tuple[Held, bytes]], delay: float) -> None:
        store = self._stores.get(queue.name)
        keys = store.keys if store is not None else self._keys(queue.name)
        args: list[Any] = [keys.group, action, int(delay * 1000)]
        for token, value in items:
            args += [token.kind, token.key, value]
        done = await self._scripts['GROUP_SETTLE'](keys=[keys.stream, keys.retry, keys.held, keys.dead], args=args)
        if store is not None:
            for token, _ in items:
                store.held.pop(token.key, None)
        if done < len(items):
            self.log.warning('Group store %s: could not %s %d signal(s): settled already (or taken by another '
                             'member after the visibility timeout)', queue.name, action, len(items) - done)

    async def _refresh(self) -> None:
        """Keep what this member holds: every third of the shortest visibility timeout."""
        while True:
            stores = list(self._stores.values())
            await asyncio.sleep(min((s.visibility_ms for s in stores), default=3000) / 3000)
            for store in list(self._stores.values()):
                held = list(store.held.values())
                if not held:
                    continue
                ids = [t.key for t in held if t.kind == 's']
                members = [t.key for t in held if t.kind == 'z']
                keys = store.keys
                try:
                    await self._scripts['GROUP_REFRESH'](keys=[keys.stream, keys.held],
                                                         args=[keys.group, self.uid, store.visibility_ms, len(ids),
                                                               *ids, *members])
                except Exception as exc:
                    self.log.warning('Group %s of %s: could not keep the %d signals held here (%s: %s); another '
                                     'member may take them after the visibility timeout', keys.group, keys.stream,
                                     len(held), type(exc).__name__, exc)

    # figures and dead letters

    async def depth(self, name: str) -> QueueDepth:
        """Ready: the group's lag in the stream, due retries and expired leases; delayed: retries not
        due; in flight: entries pending in the group and held retries."""
        keys = self._keys(name)
        ready, delayed, taken = await self._scripts['GROUP_DEPTH'](keys=[keys.stream, keys.retry, keys.held],
                                                                   args=[keys.group])
        return QueueDepth(int(ready), int(delayed), int(taken))

    async def length(self, name: str) -> int:
        return (await self.depth(name)).ready

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        entries = cast(list[bytes], await self.redis.lrange(self._keys(name).dead, 0, limit - 1))
        return [dead_letter(name, entry) for entry in entries]

    async def dead_letter_count(self, name: str) -> int:
        return int(await self.redis.llen(self._keys(name).dead))

    async def requeue_dead_letters(self, name: str) -> int:
        """Move dead letters back to the group as attempt 1, due now, in chunks of 1000."""
        keys = self._keys(name)
        total, chunk = 0, 1000
        while True:
            moved = int(await self._scripts['GROUP_REQUEUE'](keys=[keys.dead, keys.retry],
                                                             args=[chunk, uuid.uuid4().hex[:ID - 4]]))
            total += moved
            if moved < chunk:
                return total

    async def remove_dead_letters(self, name: str, select: SelectDeadLetter, *, requeue: bool) -> int:
        keys = self._keys(name)
        entries = cast(list[bytes], await self.redis.lrange(keys.dead, 0, -1))
        taken = [entry for i, entry in enumerate(entries) if select(i, dead_letter(name, entry))]
        total = 0
        for start in range(0, len(taken), 1000):
            total += int(await self._scripts['GROUP_REMOVE_DEAD'](
                keys=[keys.dead, keys.retry],
                args=['1' if requeue else '0', uuid.uuid4().hex[:ID - 4], *taken[start:start + 1000]]))
        return total

    async def exists(self, name: str) -> bool:
        """Joined once (in the registry of the prefix), or holding retries or dead letters."""
        keys = self._keys(name)
        if await self.redis.hexists(group_registry(self.prefix), name):
            return True
        return bool(await self.redis.exists(keys.retry, keys.held, keys.dead))

    # lifecycle

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def ping(self) -> None:
        await self.redis.ping()

    async def stop_consuming(self, queue: Queue[Any]) -> None:
        """Send the pending acks; what is still pending in this member's name (a fetch cancelled on the
        way) is left for the others to claim at once, and a consumer that holds nothing is deleted."""
        store = self._stores.pop(queue.name, None)
        if store is None:
            return
        if store.flushing is not None:
            await asyncio.gather(store.flushing, return_exceptions=True)
        keys = store.keys
        await self._scripts['GROUP_LEAVE'](keys=[keys.stream], args=[keys.group, self.uid, store.visibility_ms])

    async def close(self) -> None:
        """Send the pending acks (what is still held is claimed by others after the visibility
        timeout) and close the blocking client; the command client is the bus's."""
        if self._closed:
            return
        self._closed = True
        if self._refresher is not None:
            self._refresher.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.close_timeout):
                await asyncio.gather(*self._background, return_exceptions=True)
        for task in self._background:
            task.cancel()
        if self._refresher is not None:
            await asyncio.gather(self._refresher, return_exceptions=True)
        self._stores.clear()
        await self._blocking.aclose()
