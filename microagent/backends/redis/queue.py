"""Reliable queues on Redis lists: the queue transport.

Producers RPUSH, as 1.x does; consumers take messages into their own in-flight list and settle
them there (``ownership.py`` keeps them owned or gives them back). Messages are never rewritten in
Redis: a retry, a dead letter or a requeue keeps the stored bytes, so the frame's headers and
message id survive them. Key names are in ``keys.py``, the Lua scripts in ``scripts/``.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar, cast

import msgspec
from redis.asyncio.cluster import RedisCluster

from microagent.backends.redis import scripts as lua
from microagent.backends.redis.client import DEFAULT_DSN, FAILOVER_TIMEOUT, client
from microagent.backends.redis.frame import FrameError, unframe
from microagent.backends.redis.keys import WAKE_MARKER, QueueKeys, delayed_member, exchange_key
from microagent.backends.redis.ownership import Owned, Ownership
from microagent.backends.redis.ratelimit import RedisLimiter
from microagent.backends.redis.replicas import Replicas, check_wait
from microagent.backends.redis.wire import Wire, delivery_of, is_legacy, stored
from microagent.dsn import hide_password
from microagent.errors import InvalidArgument, QueueNotFound
from microagent.message import Envelope
from microagent.payload import DEFAULT_MAX_MESSAGE_SIZE
from microagent.queue import Queue, topics_match
from microagent.transport import DeadLetter, Delivery, QueueDepth, SelectDeadLetter

__all__ = ['DEFAULT_MAX_FETCH_BYTES', 'RedisQueueTransport']

T = TypeVar('T')

#: the default byte bound of one fetch (``max_fetch_bytes``): a larger message is fetched alone
DEFAULT_MAX_FETCH_BYTES = 16 * 1024 * 1024


class RedisQueueTransport(Ownership):
    """Reliable queues on Redis lists (``BrokerTransport``).

    ``heartbeat`` is how long (s) a silent consumer is trusted before its in-flight messages go back
    to the queue. ``wire='1.x'`` stores bare 1.x bodies, which 1.x consumers pop; frames and bare
    bodies are consumed always. Attempts are counted per stored message: per message id with frames;
    bare bodies that are byte for byte identical share one count."""

    fetch_cancel_safe = True
    #: priority levels: one list per level (``keys.py``), fetched highest first
    send_options: frozenset[str] = frozenset(('priority',))
    unsettled_fate = "it stays in this consumer's in-flight list until the next heartbeat returns it to the queue"
    #: how long a read may take beyond its blocking time before the connection is deemed dead
    read_margin: float = 5.0
    #: how long ``close`` may try to give back in-flight messages before it just closes connections
    close_timeout: float = 5.0
    #: acks are sent together, at most this many seconds after the first of them
    ack_delay: float = 0.002

    def __init__(self, dsn: str = DEFAULT_DSN, *, log: logging.Logger | None = None, wire: Wire = 'envelope',
                 heartbeat: float = 10.0, wait_replicas: int = 0, wait_timeout: float = 1.0,
                 failover_timeout: float = FAILOVER_TIMEOUT, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES, **redis_options: Any) -> None:
        for label, value in (('max_message_size', max_message_size), ('max_fetch_bytes', max_fetch_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidArgument(f'{label} must be a positive number of bytes, got {value!r}')
        if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float) or not 0 < heartbeat < math.inf:
            raise InvalidArgument(f'heartbeat must be positive (seconds), got {heartbeat!r}')
        wait_replicas, wait_timeout = check_wait(wait_replicas, wait_timeout)
        self.dsn = dsn
        self.legacy = is_legacy(wire)
        self.heartbeat = float(heartbeat)
        self.wait_replicas = wait_replicas
        self.wait_timeout = float(wait_timeout)
        self.failover_timeout = float(failover_timeout)
        self.max_message_size = max_message_size
        self.max_fetch_bytes = max_fetch_bytes
        self.uid = uuid.uuid4().hex  # this consumer, in key names: Q:inflight:{uid}, Q:consumer:{uid}
        self.log = log or logging.getLogger('microagent.redis')
        self.redis = client(dsn, redis_options, failover_timeout=failover_timeout)
        self.cluster = isinstance(self.redis, RedisCluster)
        self._replicas = Replicas(self.redis, dsn, redis_options, count=wait_replicas, timeout=self.wait_timeout,
                                  failover_timeout=self.failover_timeout, log=self.log)
        self._blocking = client(dsn, redis_options, reader=True)
        self._scripts = {name: self.redis.register_script(text) for name, text in lua.SCRIPTS.items()}
        self._fetch_script = self._blocking.register_script(lua.SCRIPTS['FETCH'])
        self._owned: dict[str, Owned] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._closing = False

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {hide_password(self.dsn)}>'

    def limiter(self) -> RedisLimiter:
        """Rate limits shared through this server by every process (``ratelimit.py``)."""
        return RedisLimiter(self.redis)

    # producing

    async def declare(self, queue: Queue[Any]) -> None:
        if queue.exchange:  # the binding lives on the server, for every process that publishes
            await self.redis.hset(exchange_key(queue.exchange), queue.name, msgspec.json.encode(queue.topics))

    async def put(self, queue: Queue[Any], envelopes: Sequence[Envelope], *, delay: float = 0.0,
                  **options: Any) -> None:
        # ``priority`` is the one send option (the engine checked it against the queue's levels)
        messages = stored(envelopes, self.legacy)
        level: int = options.get('priority', 0)
        if delay <= 0:
            if level:
                await self._put_level(queue, level, messages)
            elif self.wait_replicas:
                await self._replicas.run(queue.name, 'RPUSH', queue.name, *messages)
            else:
                await self.redis.rpush(queue.name, *messages)
            return
        # fresh messages: beside the retries in Q:delayed, but with no attempt count written for them
        keys = self._keys(queue.name)
        members = [delayed_member(message, level) for message in messages]
        if self.wait_replicas:
            await self._replicas.run(queue.name, 'EVAL', lua.SCRIPTS['DELAY'], 1, keys.delayed, delay, *members)
        else:
            await self._script('DELAY')(keys=[keys.delayed], args=[delay, *members])
        self._wake_when_due(keys, delay)

    async def _put_level(self, queue: Queue[Any], level: int, messages: list[bytes]) -> None:
        """RPUSH to the list of a priority level above 0, waking a consumer blocked on ``Q``."""
        keys = self._keys(queue.name)
        if self.wait_replicas:
            await self._replicas.run(queue.name, 'EVAL', lua.SCRIPTS['PUT'], 2, keys.level(level), keys.queue,
                                     *messages)
        else:
            await self._script('PUT')(keys=[keys.level(level), keys.queue], args=messages)

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> int:
        """Push to every queue whose binding, stored in Redis by whoever declared it, takes the
        routing key, all or none; return how many."""
        bound = await self.redis.hgetall(exchange_key(exchange))
        targets = [name.decode() if isinstance(name, bytes) else name for name, topics in bound.items()
                   if topics_match(tuple(msgspec.json.decode(topics, type=list[str])), routing_key)]
        if not targets:
            raise QueueNotFound(f'No queue is bound to exchange {exchange!r} for key {routing_key!r}')
        (data,) = stored([envelope], self.legacy)
        if self.wait_replicas:  # each queue on its master, each copy confirmed
            await asyncio.gather(*(self._replicas.run(name, 'RPUSH', name, data) for name in targets))
        elif self.cluster:  # queues in several slots: no transaction spans them
            await asyncio.gather(*(self.redis.rpush(name, data) for name in targets))
        else:
            async with self.redis.pipeline(transaction=True) as pipe:
                for name in targets:
                    pipe.rpush(name, data)
                await pipe.execute()
        return len(targets)

    async def length(self, name: str) -> int:
        keys = self._keys(name)
        if not keys.levels:
            return int(await self.redis.llen(name))
        return await self._ready(keys)

    async def _ready(self, keys: QueueKeys) -> int:
        """What waits in every level's list, a wake-up marker not counted."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in (keys.queue, *keys.levels):
                pipe.llen(key)
            pipe.lpos(keys.queue, WAKE_MARKER)
            *lengths, marker = await pipe.execute()
        return sum(map(int, lengths)) - (marker is not None)

    async def depth(self, name: str) -> QueueDepth:
        """Ready: the list ``Q``; delayed: ``Q:delayed``; in flight: the in-flight lists of the
        consumers in ``Q:consumers`` (a dead consumer's until its messages are reclaimed), all from
        the server, so every process reads the same figures."""
        keys = self._keys(name)
        consumers = cast(set[bytes], await self.redis.smembers(keys.consumers))
        ready, delayed, *taken = await asyncio.gather(
            self.length(name), self.redis.zcard(keys.delayed),
            *(self.redis.llen(keys.inflight_of(consumer.decode())) for consumer in consumers))
        return QueueDepth(int(ready), int(delayed), sum(map(int, taken)))

    # consuming

    async def consume(self, queue: Queue[Any], concurrency: int) -> None:
        """Nothing to set up: a Redis consumer pulls, and registers itself on its first fetch."""

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery[bytes]]:
        owned = self._owned.get(queue.name) or await self._register(queue.name)
        keys = owned.keys
        async with owned.lock:
            if owned.dirty:  # a failed round trip may have left messages in flight that nobody holds
                await self._return_orphans(owned)
            try:
                messages, attempts, wait = await self._take(keys, count)
                if not messages:
                    block = max(0.01, min(timeout, wait if wait >= 0 else math.inf))
                    async with asyncio.timeout(block + self.read_margin):
                        first = await self._blocking.execute_command(
                            'BLMOVE', keys.queue, keys.inflight, 'LEFT', 'RIGHT', block)
                    if first is None:
                        return []
                    # the script judges it in place and returns it, unless it is too large
                    size, first = len(first), None
                    messages, attempts, _ = await self._take(keys, count, size)
            except asyncio.CancelledError:
                # a message may have reached the in-flight list without reaching us: put it back
                owned.lost_a_fetch()
                await asyncio.shield(self._spawn(self._return_orphans_on_stop(owned)))
                raise
            except Exception:
                owned.lost_a_fetch()  # the next fetch returns what the server moved, first
                raise
            owned.take(messages)
        target = owned.target
        if not attempts:
            return [delivery_of(message, target) for message in messages]
        return [delivery_of(message, target, abs(attempt), attempt < 0)
                for message, attempt in zip(messages, attempts, strict=True)]

    async def _take(self, keys: QueueKeys, count: int, first: int | None = None,
                    ) -> tuple[list[bytes], list[int], float]:
        """Run the fetch script until it takes something or finds nothing left to take (a call that
        only dead-lettered too large messages goes on with the rest). ``first``: the length of
        the message BLMOVE has just moved to the tail of our in-flight list."""
        while True:
            args: list[Any] = [count, self.uid, int(self.heartbeat * 1000), self.max_fetch_bytes,
                               self.max_message_size, repr(keys.queue)]
            if first is not None:
                args.append(first)
            async with asyncio.timeout(self.read_margin):
                reply = await self._fetch_script(
                    keys=[keys.queue, keys.inflight, keys.attempts, keys.delayed, keys.consumers,
                          keys.heartbeat, keys.dead, *keys.levels],
                    args=args)
            messages, attempts, wait, dead = reply
            if dead:
                self.log.warning('Queue %s: %d messages over max_message_size %d bytes dead-lettered at fetch',
                                 keys.queue, dead, self.max_message_size)
            if messages or not dead:
                return messages, attempts, float(wait)
            first = None

    async def ack(self, queue: Queue[Any], delivery: Delivery[bytes]) -> None:
        """Acks of ``ack_delay`` seconds go in one round trip, sent in the background: the handler's
        slot is free at once. Until sent, the message stays in our in-flight list (held), so a
        crash redelivers it; a failed send makes it an orphan that the next heartbeat requeues."""
        owned = self._owned[queue.name]
        owned.acks.append(delivery.token)
        if owned.flushing is None:
            owned.flushing = self._spawn(self._flush_acks(owned))

    async def _flush_acks(self, owned: Owned) -> None:
        await asyncio.sleep(self.ack_delay)  # gather the acks of a few milliseconds into one round trip
        messages, owned.acks, owned.flushing = owned.acks, [], None
        try:
            await self._script('ACK')(keys=[owned.keys.inflight, owned.keys.attempts],
                                      args=[b''.join(messages), ','.join([str(len(m)) for m in messages])])
        except Exception as exc:
            owned.dirty = True
            self.log.warning('Queue %s: %d acks failed (%s: %s); those still in flight go back to the '
                             'queue at the next fetch or heartbeat, to be delivered again',
                             owned.keys.queue, len(messages), type(exc).__name__, exc)
        finally:
            owned.drop(messages)

    async def retry(self, queue: Queue[Any], delivery: Delivery[bytes], delay: float, reason: str) -> None:
        owned = self._owned[queue.name]
        keys = owned.keys
        await self._settle(owned, delivery, 'retry', self._script('RETRY')(
            keys=[keys.inflight, keys.delayed, keys.attempts],
            args=[delivery.token, delay, uuid.uuid4().hex, delivery.attempt + 1]))
        self._wake_when_due(keys, delay)

    def _wake_when_due(self, keys: QueueKeys, delay: float) -> None:
        """Move the retry back when due, waking a consumer blocked on the queue at once (any
        consumer's fetch would move it too, this only saves waiting for its next poll)."""
        def due() -> None:
            self._timers.discard(handle)
            moving = self._script('MOVE_DUE')(keys=[keys.queue, keys.delayed, *keys.levels])
            self._spawn(self._quietly(keys.queue, moving))
        handle = asyncio.get_running_loop().call_later(delay, due)
        self._timers.add(handle)

    async def dead_letter(self, queue: Queue[Any], delivery: Delivery[bytes], reason: str) -> None:
        owned = self._owned[queue.name]
        keys = owned.keys
        header = msgspec.json.encode({'reason': reason, 'attempts': delivery.attempt, 'time': time.time()})
        await self._settle(owned, delivery, 'dead-letter', self._script('DEAD_LETTER')(
            keys=[keys.inflight, keys.dead, keys.attempts], args=[delivery.token, header]))

    async def release(self, queue: Queue[Any], deliveries: Sequence[Delivery[bytes]]) -> None:
        if not deliveries:
            return
        owned = self._owned[queue.name]
        messages = [delivery.token for delivery in deliveries]
        try:
            await self._script('RELEASE')(keys=[owned.keys.inflight, owned.keys.queue, owned.keys.attempts,
                                                *owned.keys.levels], args=messages)
        except Exception:
            owned.dirty = True  # the next resync returns them
            raise
        finally:
            owned.drop(messages)

    async def _settle(self, owned: Owned, delivery: Delivery[bytes], action: str, operation: Awaitable[Any]) -> None:
        """Run a settle script. If it fails, the message stays held (the engine tries again, then
        releases it, which drops the hold), and the next resync looks for orphans. A script that
        finds the message gone from our in-flight list did nothing: say so."""
        try:
            done = await operation
        except Exception:
            owned.dirty = True
            raise
        owned.drop([delivery.token])
        if not done:
            self.log.warning('Queue %s: could not %s a message: it is no longer in this consumer\'s in-flight '
                             'list (settled already, or returned to the queue by a resync or as a dead '
                             'consumer\'s, then it is delivered again)', owned.keys.queue, action)

    # dead letters

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        entries = cast(list[bytes], await self.redis.lrange(self._keys(name).dead, 0, limit - 1))
        return [self._dead_letter(name, entry) for entry in entries]

    @staticmethod
    def _dead_letter(name: str, entry: bytes) -> DeadLetter:
        line, _, message = entry.partition(b'\n')
        meta = msgspec.json.decode(line, type=dict[str, Any])
        try:
            envelope = unframe(message, f'dead letter of queue {name!r}')
        except FrameError:  # dead-lettered because it is malformed: shown as it was stored
            envelope = Envelope(message, None)
        return DeadLetter(name, envelope, meta['reason'], meta['attempts'], meta['time'])

    async def dead_letter_count(self, name: str) -> int:
        return int(await self.redis.llen(self._keys(name).dead))

    async def requeue_dead_letters(self, name: str) -> int:
        """Move dead letters back unchanged (a frame keeps its message id), in chunks of 1000."""
        total, chunk = 0, 1000
        while True:
            keys = self._keys(name)
            moved = int(await self._script('REQUEUE')(keys=[keys.dead, name, *keys.levels], args=[chunk]))
            total += moved
            if moved < chunk:
                return total

    async def remove_dead_letters(self, name: str, select: SelectDeadLetter, *, requeue: bool) -> int:
        """Pick from a snapshot, then remove exactly the entries picked (a letter dead-lettered
        meanwhile is not touched), in chunks of 1000."""
        entries = cast(list[bytes], await self.redis.lrange(self._keys(name).dead, 0, -1))
        taken = [entry for i, entry in enumerate(entries) if select(i, self._dead_letter(name, entry))]
        total = 0
        for start in range(0, len(taken), 1000):
            keys = self._keys(name)
            total += int(await self._script('REMOVE_DEAD')(keys=[keys.dead, name, *keys.levels],
                                                            args=['1' if requeue else '0',
                                                                  *taken[start:start + 1000]]))
        return total

    async def exists(self, name: str) -> bool:
        """A Redis queue is declared by nothing but its data (or an exchange binding, which is not
        looked up here): its list, dead letters, retries or consumers."""
        keys = self._keys(name)
        return bool(await self.redis.exists(name, keys.dead, keys.delayed, keys.consumers))

    # lifecycle

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._spawned_ended)
        return task

    def _spawned_ended(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.log.error('%r: background task %s failed (%s: %s)', self, task.get_name(),
                           type(exc).__name__, exc, exc_info=exc)

    async def _quietly(self, name: str, operation: Awaitable[Any]) -> None:
        try:
            await operation
        except Exception as exc:
            self.log.warning('Queue %s: could not move due retries back (%s: %s); the next fetch will',
                             name, type(exc).__name__, exc)

    async def ping(self) -> None:
        """PING on the command connection (the engine knows whether its fetches work)."""
        await self.redis.ping()

    async def stop_consuming(self, queue: Queue[Any]) -> None:
        """The engine stopped consuming the queue: send the pending acks, give back what is still in
        flight here and stop beating for it, for up to ``close_timeout`` s (else the heartbeat
        expires and a consumer of the queue returns the rest)."""
        owned = self._owned.get(queue.name)
        if owned is None:
            return
        try:
            async with asyncio.timeout(self.close_timeout):
                if self._background:
                    await asyncio.gather(*self._background, return_exceptions=True)
                async with owned.lock:
                    del self._owned[queue.name]
                    await self._give_back(owned)
        except TimeoutError:
            self._owned.pop(queue.name, None)
            self._abandon([owned], 'stop')

    async def close(self) -> None:
        """Stop the heartbeat and give back whatever this consumer still holds, for up to
        ``close_timeout`` s; then close the connections whatever the server does."""
        self._closing = True
        for handle in self._timers:
            handle.cancel()
        try:
            async with asyncio.timeout(self.close_timeout):
                await self._return_held()
        except TimeoutError:
            self._abandon(list(self._owned.values()), 'close')
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()  # it must expire, so that others return what is left
        for task in self._background:
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._owned.clear()
        for connection in (self._blocking, self.redis, *self._replicas.clients):
            try:
                async with asyncio.timeout(self.read_margin):
                    await connection.aclose()
            except Exception as exc:
                self.log.warning('%r: closing a connection failed (%s: %s)', self, type(exc).__name__, exc)
