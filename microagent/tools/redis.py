"""The Redis backend: pub/sub signals and reliable list queues, wire-compatible with microagent 1.x.

Signals: one pattern-subscribed connection per bus; each message read is handed to ``dispatch``,
which never blocks the reading loop. The loop resubscribes by itself when Redis restarts.

Queues: producers RPUSH the JSON body, as 1.x does. A consumer moves messages atomically into its
own in-flight list and removes each one only once it is settled, so a process killed mid-handling
loses nothing: its heartbeat key expires and any live consumer of the queue puts the messages back.
Key names and Lua scripts live in ``redis_scripts``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from typing import Any, cast

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..broker import DEFAULT_MAX_MESSAGE_SIZE, AbstractQueueBroker, DeadLetter, Delivery, backoff
from ..bus import AbstractSignalBus
from ..errors import BackendClosed, InvalidArgument
from ..queue import Queue
from . import redis_scripts as lua
from .redis_scripts import QueueKeys

__all__ = ['RedisBroker', 'RedisSignalBus']

DEFAULT_DSN = 'redis://localhost:6379/0'
_NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def _client(dsn: str, options: dict[str, Any], reader: bool = False) -> Redis:
    """A client from the DSN (``rediss://``, user, password and db are honoured by redis-py).

    Commands retry a few times on a connection error (redis-py's ``from_url`` default is none).
    A ``reader`` (blocking reads of the subscriber and consumers) has no redis-py retries, so our
    loop logs and backs off, and no socket timeout: redis-py's default 5 s would kill an idle
    reader, and on Python 3.11 its ``wait_for`` around sends can swallow a cancellation. Its
    calls are bounded by ``asyncio.timeout`` instead, and TCP keepalive finds dead peers."""
    if reader:
        options = {**options, 'retry': Retry(NoBackoff(), 0), 'socket_timeout': None}
    else:  # a pooled connection left stale by a server restart reconnects instead of failing a send
        options = {'retry': Retry(ExponentialBackoff(cap=1.0, base=0.05), 3), **options}
    return Redis.from_url(dsn, **options)


class RedisSignalBus(AbstractSignalBus):
    """Signals over Redis pub/sub: ``RedisSignalBus('redis://localhost/7', prefix='MYAPP')``.

    Extra keyword options go to ``redis.asyncio.Redis.from_url`` (e.g. ``socket_timeout``).
    """

    #: cap of the delay between reconnection attempts of the subscriber, in seconds
    reconnect_cap: float = 5.0
    #: how long ``subscribe`` waits for Redis to confirm before going on (the loop keeps trying)
    subscribe_timeout: float = 5.0

    def __init__(self, dsn: str = DEFAULT_DSN, prefix: str = 'PUBSUB', log: logging.Logger | None = None, *,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, **redis_options: Any) -> None:
        super().__init__(dsn, prefix, log, max_message_size=max_message_size)
        self.redis = _client(dsn, redis_options)
        self._listener = _client(dsn, redis_options, reader=True)
        self._patterns: list[str] = []
        self._confirm: dict[bytes, list[asyncio.Future[None]]] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    async def publish(self, channel: str, data: bytes) -> None:
        await self.redis.publish(channel, data)

    async def subscribe(self, pattern: str) -> None:
        if self._closed:
            raise BackendClosed(f'{self!r} is closed')
        self._patterns.append(pattern)
        confirmed = asyncio.get_running_loop().create_future()
        self._confirm.setdefault(pattern.encode(), []).append(confirmed)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name=f'redis-bus:{self.prefix}')
        elif self._pubsub is not None:
            with contextlib.suppress(*_NETWORK_ERRORS):  # the reading loop will subscribe it again
                await self._pubsub.psubscribe(pattern)
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), self.subscribe_timeout)
        except TimeoutError:
            self.log.warning('%r: no confirmation of subscription %s yet; will keep trying', self, pattern)

    async def _read(self) -> None:
        """The single reading loop: (re)subscribe every pattern, hand each message to ``dispatch``."""
        failures = 0
        while not self._closed:
            pubsub = self._listener.pubsub()
            try:
                self._pubsub = pubsub
                await pubsub.psubscribe(*self._patterns)
                if failures:
                    self.log.info('%r: subscribed again to %d patterns', self, len(self._patterns))
                    failures = 0
                while True:
                    # raw replies: [b'pmessage', pattern, channel, data] or [b'psubscribe', pattern, n]
                    reply = await pubsub.parse_response(block=True)
                    if not isinstance(reply, list):
                        continue
                    if reply[0] == b'pmessage':
                        await self.deliver(reply[2], reply[3])  # never raises; waits while the backlog is full
                    elif reply[0] == b'psubscribe':
                        for future in self._confirm.pop(reply[1], ()):
                            if not future.done():
                                future.set_result(None)
            except asyncio.CancelledError:
                raise
            except _NETWORK_ERRORS as exc:
                failures += 1
                delay = backoff(failures, 0.1, self.reconnect_cap)
                self.log.warning('%r: subscriber lost Redis (%s: %s); reconnect %d in %.1fs',
                                 self, type(exc).__name__, exc, failures, delay)
                await asyncio.sleep(delay)
            except Exception:  # a bug or a reply we cannot parse: the bus must keep receiving
                failures += 1
                delay = backoff(failures, 0.1, self.reconnect_cap)
                self.log.exception('%r: subscriber failed; subscribing again (%d) in %.1fs', self, failures, delay)
                await asyncio.sleep(delay)
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):  # the loop must go on whatever closing says
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for futures in self._confirm.values():
            for future in futures:
                future.cancel()
        self._confirm.clear()
        await self._listener.aclose()
        await self.redis.aclose()


class _Owned:
    """What a consumer took from one queue and has not settled: the in-flight list's expected content."""

    def __init__(self, keys: QueueKeys) -> None:
        self.keys = keys
        self.held: Counter[bytes] = Counter()
        self.lock = asyncio.Lock()  # one fetch or resync at a time
        self.dirty = False  # a settle failed: the in-flight list may hold orphans

    def take(self, bodies: list[bytes]) -> None:
        self.held.update(bodies)

    def drop(self, bodies: list[bytes]) -> None:
        held = self.held
        for body in bodies:
            left = held[body] - 1
            if left > 0:
                held[body] = left
            else:
                del held[body]


class RedisBroker(AbstractQueueBroker):
    """Reliable queues on Redis lists: ``RedisBroker('redis://localhost/7')``.

    ``heartbeat`` is how long (s) a silent consumer is trusted before its in-flight messages go back
    to the queue. Extra keyword options go to ``redis.asyncio.Redis.from_url``.
    """

    fetch_cancel_safe = True
    unsettled_fate = "it stays in this consumer's in-flight list until the next heartbeat returns it to the queue"
    #: how long a read may take beyond its blocking time before the connection is deemed dead
    read_margin: float = 5.0
    #: acks are sent together, at most this many seconds after the first of them
    ack_delay: float = 0.002

    def __init__(self, dsn: str = DEFAULT_DSN, log: logging.Logger | None = None, *,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, heartbeat: float = 10.0,
                 **redis_options: Any) -> None:
        super().__init__(dsn, log, max_message_size=max_message_size)
        if heartbeat <= 0:
            raise InvalidArgument(f'heartbeat must be positive, got {heartbeat!r}')
        self.heartbeat = heartbeat
        self.redis = _client(dsn, redis_options)
        self._blocking = _client(dsn, redis_options, reader=True)
        self._scripts = {name: self.redis.register_script(getattr(lua, name))
                         for name in ('FETCH', 'ACK', 'RETRY', 'DEAD_LETTER', 'RELEASE', 'RECLAIM',
                                      'REQUEUE', 'MOVE_DUE', 'DELAY')}
        self._fetch_script = self._blocking.register_script(lua.FETCH)
        self._owned: dict[str, _Owned] = {}
        self._acks: dict[str, list[bytes]] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()

    def _script(self, name: str) -> AsyncScript:
        return self._scripts[name]

    # producing

    async def put(self, queue: Queue[Any], messages: list[bytes], delay: float = 0.0) -> None:
        if delay <= 0:
            await self.redis.rpush(queue.name, *messages)
            return
        # fresh messages: beside the retries in Q:delayed, but with no attempt count written for them
        keys = QueueKeys.of(queue.name, self.uid)
        members = [uuid.uuid4().hex.encode() + data for data in messages]
        await self._script('DELAY')(keys=[keys.delayed], args=[delay, *members])
        self._wake_when_due(keys, delay)

    async def declare_queue(self, queue: Queue[Any]) -> None:
        if queue.exchange:  # the binding lives on the server, for every process that publishes
            await self.redis.hset(lua.exchange_key(queue.exchange), queue.name, msgspec.json.encode(queue.topics))

    async def bindings(self, exchange: str) -> dict[str, tuple[str, ...]]:
        bound = await self.redis.hgetall(lua.exchange_key(exchange))
        return {name if isinstance(name, str) else name.decode(): tuple(msgspec.json.decode(topics, type=list[str]))
                for name, topics in bound.items()}

    async def route(self, exchange: str, routing_key: str, data: bytes, targets: list[str]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:  # every bound queue, or none
            for name in targets:
                pipe.rpush(name, data)
            await pipe.execute()

    async def queue_length(self, name: str) -> int:
        return int(await self.redis.llen(name))

    # consuming

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery]:
        owned = self._owned.get(queue.name) or await self._register(queue.name)
        keys = owned.keys
        async with owned.lock:
            try:
                bodies, attempts, wait = await self._take(keys, count)
                if not bodies:
                    block = max(0.01, min(timeout, wait if wait >= 0 else math.inf))
                    async with asyncio.timeout(block + self.read_margin):
                        first = await self._blocking.execute_command(  # type: ignore[no-untyped-call]
                            'BLMOVE', keys.queue, keys.inflight, 'LEFT', 'RIGHT', block)
                    if first is None:
                        return []
                    bodies, attempts, _ = await self._take(keys, count - 1, first)
            except asyncio.CancelledError:
                # a message may have reached the in-flight list without reaching us: put it back
                await asyncio.shield(self._return_orphans(owned))
                raise
            owned.take(bodies)
        return [Delivery(data=body, attempt=attempts[i] if attempts else 1)
                for i, body in enumerate(bodies)]

    async def _take(self, keys: QueueKeys, count: int, first: bytes | None = None,
                    ) -> tuple[list[bytes], list[int], float]:
        args: list[Any] = [count] if first is None else [count, first]
        async with asyncio.timeout(self.read_margin):
            reply = await self._fetch_script(keys=[keys.queue, keys.inflight, keys.attempts, keys.delayed], args=args)
        bodies, attempts, wait = reply
        return bodies, attempts, float(wait)

    async def ack(self, queue: Queue[Any], delivery: Delivery) -> None:
        """Acks of ``ack_delay`` seconds go in one round trip, sent in the background: the handler's
        slot is free at once. Until sent, the message stays in our in-flight list (held), so a
        crash redelivers it; a failed send makes it an orphan that the next heartbeat requeues."""
        batch = self._acks.get(queue.name)
        if batch is None:
            batch = self._acks[queue.name] = []
            self._spawn(self._flush_acks(queue.name))
        batch.append(delivery.data)

    async def _flush_acks(self, name: str) -> None:
        await asyncio.sleep(self.ack_delay)  # gather the acks of a few milliseconds into one round trip
        bodies = self._acks.pop(name)
        owned = self._owned[name]
        try:
            await self._script('ACK')(keys=[owned.keys.inflight, owned.keys.attempts],
                                      args=[b''.join(bodies), ','.join(str(len(b)) for b in bodies)])
        except Exception as exc:
            owned.dirty = True
            self.log.warning('Queue %s: %d acks failed (%s: %s); the messages will be delivered again',
                             name, len(bodies), type(exc).__name__, exc)
        finally:
            owned.drop(bodies)

    async def retry(self, queue: Queue[Any], delivery: Delivery, delay: float, reason: str) -> None:
        keys = self._owned[queue.name].keys
        await self._settle(queue.name, delivery, self._script('RETRY')(
            keys=[keys.inflight, keys.delayed, keys.attempts],
            args=[delivery.data, delay, uuid.uuid4().hex, delivery.attempt + 1]))
        self._wake_when_due(keys, delay)

    def _wake_when_due(self, keys: QueueKeys, delay: float) -> None:
        """Move the retry back when due, waking a consumer blocked on the queue at once (any
        consumer's fetch would move it too, this only saves waiting for its next poll)."""
        def due() -> None:
            self._timers.discard(handle)
            self._spawn(self._quietly(self._script('MOVE_DUE')(keys=[keys.queue, keys.delayed])))
        handle = asyncio.get_running_loop().call_later(delay, due)
        self._timers.add(handle)

    async def dead_letter(self, queue: Queue[Any], delivery: Delivery, reason: str) -> None:
        keys = self._owned[queue.name].keys
        header = msgspec.json.encode({'reason': reason, 'attempts': delivery.attempt, 'time': time.time()})
        await self._settle(queue.name, delivery, self._script('DEAD_LETTER')(
            keys=[keys.inflight, keys.dead, keys.attempts], args=[delivery.data, header]))

    async def release(self, queue: Queue[Any], deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        owned = self._owned[queue.name]
        try:
            await self._script('RELEASE')(keys=[owned.keys.inflight, owned.keys.queue],
                                          args=[d.data for d in deliveries])
        except Exception:
            owned.dirty = True
            raise
        finally:
            for delivery in deliveries:
                owned.drop([delivery.data])

    async def _settle(self, name: str, delivery: Delivery, operation: Awaitable[Any]) -> None:
        """Run a settle operation; if it fails, the message becomes an orphan of our in-flight
        list, which the next heartbeat returns to the queue (so it is delivered again)."""
        owned = self._owned[name]
        try:
            await operation
        except Exception:
            owned.dirty = True
            raise
        finally:
            owned.drop([delivery.data])

    # ownership: heartbeat, reclaiming dead consumers, orphans

    async def _register(self, name: str) -> _Owned:
        owned = self._owned.get(name)
        if owned is None:
            owned = self._owned[name] = _Owned(QueueKeys.of(name, self.uid))
            await self._beat(owned)
            if self._heartbeat_task is None:
                self._heartbeat_task = asyncio.create_task(self._heartbeats(), name='redis-broker:heartbeat')
        return owned

    async def _beat(self, owned: _Owned) -> None:
        keys = owned.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.heartbeat, 1, px=int(self.heartbeat * 1000))
            pipe.sadd(keys.consumers, self.uid)
            await pipe.execute()
        members = cast(set[bytes], await self.redis.smembers(keys.consumers))
        reclaimed = await self._reclaim(keys, [c.decode() for c in members if c.decode() != self.uid])
        if reclaimed:
            self.log.warning('Queue %s: %d messages of dead consumers returned to the queue',
                             keys.queue, reclaimed)
        if owned.dirty:
            await self._resync(owned)

    async def _reclaim(self, keys: QueueKeys, consumers: list[str]) -> int:
        if not consumers:
            return 0
        pairs = [k for c in consumers for k in (lua.heartbeat_key(keys.queue, c), lua.inflight_key(keys.queue, c))]
        return int(await self._script('RECLAIM')(keys=[keys.consumers, keys.queue, *pairs], args=consumers))

    async def _heartbeats(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.heartbeat / 3 if not failures else backoff(failures, 0.1, self.heartbeat / 3))
            try:
                for owned in list(self._owned.values()):
                    await self._beat(owned)
            except _NETWORK_ERRORS as exc:
                failures += 1
                self.log.warning('%r: heartbeat failed (%s: %s); retry %d', self, type(exc).__name__, exc, failures)
            else:
                failures = 0

    async def _resync(self, owned: _Owned) -> None:
        async with owned.lock:
            await self._return_orphans(owned)

    async def _return_orphans(self, owned: _Owned) -> None:
        """Return to the queue whatever sits in our in-flight list that no handler holds
        (the caller holds ``owned.lock``, so no fetch is between Redis and ``owned.held``)."""
        owned.dirty = True
        listed = cast(list[bytes], await self.redis.lrange(owned.keys.inflight, 0, -1))
        orphans = list((Counter(listed) - owned.held).elements())
        if orphans:
            await self._script('RELEASE')(keys=[owned.keys.inflight, owned.keys.queue], args=orphans)
            self.log.warning('Queue %s: %d unsettled messages returned to the queue',
                             owned.keys.queue, len(orphans))
        owned.dirty = False

    # dead letters

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        entries = cast(list[bytes], await self.redis.lrange(f'{name}:dead', 0, limit - 1))
        letters = []
        for entry in entries:
            header, _, body = entry.partition(b'\n')
            meta = msgspec.json.decode(header, type=dict[str, Any])
            letters.append(DeadLetter(name, body, meta['reason'], meta['attempts'], meta['time']))
        return letters

    async def dead_letter_count(self, name: str) -> int:
        return int(await self.redis.llen(f'{name}:dead'))

    async def requeue_dead_letters(self, name: str) -> int:
        total, chunk = 0, 1000
        while True:
            moved = int(await self._script('REQUEUE')(keys=[f'{name}:dead', name], args=[chunk]))
            total += moved
            if moved < chunk:
                return total

    # lifecycle

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quietly(self, operation: Awaitable[Any]) -> None:
        try:
            await operation
        except _NETWORK_ERRORS as exc:
            self.log.debug('%r: background operation failed: %s', self, exc)

    async def close(self) -> None:
        """Stop the heartbeat and give back whatever this consumer still holds."""
        for handle in self._timers:
            handle.cancel()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for owned in self._owned.values():
            keys = owned.keys
            try:
                await self.redis.delete(keys.heartbeat)
                await self._reclaim(keys, [self.uid])
            except _NETWORK_ERRORS as exc:
                self.log.warning('%r: could not return in-flight messages of %s on close (%s); '
                                 'another consumer will after %.0fs', self, keys.queue, exc, self.heartbeat)
        self._owned.clear()
        await self._blocking.aclose()
        await self.redis.aclose()

