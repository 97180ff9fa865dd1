"""Signals over Redis pub/sub, on the 1.x channels (``wire.py``): the bus transport.

One pattern-subscribed connection per bus. The reading loop awaits each delivery (the engine's
backpressure) and resubscribes by itself when Redis restarts. On a Redis Cluster, ``PUBLISH``
reaches every node: the subscriber listens on one and moves to another when it loses it.

Signal groups (``groups.py``): a signal some group receives is also appended to its stream, in the
same round trip as its PUBLISH (``registry.py`` says how a bus knows, without asking per send);
with ``wait_replicas``, such a send then waits until replicas have the entry (``replicas.py``).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Collection
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from microagent.backends.redis import registry
from microagent.backends.redis.client import DEFAULT_DSN, FAILOVER_TIMEOUT, NETWORK_ERRORS, client
from microagent.backends.redis.cluster import ClusterListener
from microagent.backends.redis.frame import FrameError, frame, unframe
from microagent.backends.redis.groups import RedisGroupTransport
from microagent.backends.redis.keys import group_channel, group_registry
from microagent.backends.redis.replicas import Replicas, check_wait
from microagent.backends.redis.scripts import GROUP_SCRIPTS
from microagent.backends.redis.wire import (
    Wire,
    answer,
    answered,
    is_legacy,
    parse_channel,
    reply_address,
    request,
    sent,
    signal_channel,
)
from microagent.dsn import hide_password
from microagent.errors import BackendClosed, ConnectionFailed
from microagent.groups import GroupOptions
from microagent.logs import LogLimiter, shown
from microagent.message import REPLY_TO, REQUEST_ID, Envelope
from microagent.retry import backoff
from microagent.signal import RESPONSE_SIGNAL
from microagent.transport import Deliver, DeliverReply

__all__ = ['RedisBusTransport']


class RedisBusTransport:
    """Signals over Redis pub/sub on the 1.x channels (``BusTransport``).

    ``wire='1.x'`` sends bare 1.x bodies; frames and bare bodies are read always. An RPC request that
    came bare (from a 1.x agent) is answered bare, whatever the wire, so a 1.x caller can read it
    (``wire.request`` and ``wire.answer`` decide it).

    Answers go only to this bus's own answer address, ``{prefix}:response`` (``wire.reply_address``;
    the answering bus adds its uid and the request id): a request whose reply address is anything
    else is dropped unhandled, and ``reply`` refuses any other address, each with a warning at most
    every ``foreign_replies.interval`` s (60) per sender, so that a forged ``reply-to`` never makes
    a receiver publish on another channel.

    ``wait_replicas=N``: a send of a signal that has a group returns once ``N`` replicas have its
    stream entry (``WAIT`` after the script, on the master of the stream's slot), else raises
    ``NotReplicated`` after ``wait_timeout`` s; a signal without groups is published as always."""

    #: cap of the delay between reconnection attempts of the subscriber, in seconds
    reconnect_cap: float = 5.0
    #: how long ``subscribe`` waits for Redis to confirm before going on (the loop keeps trying)
    subscribe_timeout: float = 5.0
    #: how often (s) the groups of the prefix are read again (a join is also heard at once)
    groups_refresh: float = 30.0

    def __init__(self, dsn: str = DEFAULT_DSN, prefix: str = 'PUBSUB', *, log: logging.Logger | None = None,
                 wire: Wire = 'envelope', failover_timeout: float = FAILOVER_TIMEOUT, wait_replicas: int = 0,
                 wait_timeout: float = 1.0, **redis_options: Any) -> None:
        wait_replicas, wait_timeout = check_wait(wait_replicas, wait_timeout)
        self.dsn = dsn
        self.prefix = prefix
        self.uid = uuid.uuid4().hex  # the answers' channel, as 1.x: {prefix}:response:{uid}#{request id}
        self.legacy = is_legacy(wire)
        self.log = log or logging.getLogger('microagent.redis')
        self.redis = client(dsn, redis_options, failover_timeout=failover_timeout)
        self.redis_options = redis_options
        # a cluster's PUBLISH reaches every node: the subscriber listens on one, and moves on when lost
        self._listener: Redis | ClusterListener = (
            ClusterListener(dsn, redis_options, self.redis) if isinstance(self.redis, RedisCluster)
            else cast(Redis, client(dsn, redis_options, reader=True)))
        self._head = f'{prefix}:'
        self._patterns: list[str] = []
        self._confirm: dict[bytes, list[asyncio.Future[None]]] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._deliver: Deliver | None = None
        self._deliver_reply: DeliverReply | None = None
        self._subscribed = False  # the reading loop holds a live subscription to every pattern
        self._closed = False
        self.foreign_replies = LogLimiter(interval=60.0)
        # signal groups: signal name -> its stream and retention, loaded on the first send
        self._groups_channel = group_channel(prefix)
        self._groups_channel_raw = self._groups_channel.encode()
        self._stores: dict[str, tuple[int, float]] = {}
        self._targets: dict[str, registry.Target] | None = None
        self._groups_lock = asyncio.Lock()
        self._groups_task: asyncio.Task[None] | None = None  # a registry read under way (a timer starts one)
        self._groups_timer: asyncio.TimerHandle | None = None
        self._publish_grouped = self.redis.register_script(GROUP_SCRIPTS['GROUP_PUBLISH'])
        self.wait_replicas = wait_replicas
        self.wait_timeout = float(wait_timeout)
        self._replicas = Replicas(self.redis, dsn, redis_options, count=wait_replicas, timeout=self.wait_timeout,
                                  failover_timeout=failover_timeout, log=self.log)
        self.bad_groups = LogLimiter(interval=60.0)

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {hide_password(self.dsn)} {self.prefix}>'

    @property
    def reply_to(self) -> str:
        return reply_address(self.prefix)

    async def publish(self, name: str, sender: str, envelope: Envelope) -> None:
        headers = envelope.headers
        channel = signal_channel(self._head, name, sender, headers.get(REQUEST_ID) if headers else None)
        targets = self._targets
        if targets is None:
            targets = await self._known_groups()
        target = targets.get(name)
        if target is None:
            await self.redis.publish(channel, sent(envelope, self.legacy))
            return
        # the stream keeps the frame whatever the wire: a grouped receiver gets headers and RPC addresses
        data = sent(envelope, self.legacy)
        stored = frame(envelope.body, headers) if self.legacy and headers is not None else b''
        args: list[bytes | str | int] = [channel, data, stored, sender, target.max_length, target.max_age_ms]
        if self.wait_replicas:  # the entry confirmed by replicas; broadcast-only sends never wait
            await self._replicas.run(target.stream, 'EVAL', GROUP_SCRIPTS['GROUP_PUBLISH'], 1, target.stream, *args)
            return
        await self._publish_grouped(keys=[target.stream], args=args)

    def groups(self) -> RedisGroupTransport:
        """The group transport of this bus: stores of signal groups on Redis streams (``groups.py``)."""
        return RedisGroupTransport(self)

    async def _known_groups(self) -> dict[str, registry.Target]:
        """The first send: listen for joins, then read the registry (a join between the two is
        heard), and read it again every ``groups_refresh`` s."""
        async with self._groups_lock:
            if self._targets is None:
                if self._groups_channel not in self._patterns:  # once, even when reading the registry failed
                    await self._listen([self._groups_channel])
                await self._read_registry()
                self._refresh_later()
        assert self._targets is not None
        return self._targets

    async def _read_registry(self) -> None:
        entries = cast(dict[bytes, bytes], await self.redis.hgetall(group_registry(self.prefix)))
        stores: dict[str, tuple[int, float]] = {}
        for store, raw in entries.items():
            try:
                name, length, age = registry.parse(store, raw)
            except ValueError as exc:
                self.bad_groups.warning(self.log, 'registry', 'Ignored group %s of prefix %s: %s',
                                        shown(store), self.prefix, exc)
                continue
            stores[name] = (length, age)
        self._stores = stores
        self._targets = registry.targets(self.prefix, stores)

    def _refresh_later(self) -> None:
        """Read the registry again in ``groups_refresh`` s: a timer, then a task only while reading."""
        def due() -> None:
            self._groups_timer = None
            if not self._closed:
                self._groups_task = asyncio.ensure_future(self._refresh_groups())
        self._groups_timer = asyncio.get_running_loop().call_later(self.groups_refresh, due)

    async def _refresh_groups(self) -> None:
        try:
            await self._read_registry()
        except Exception as exc:
            self.log.warning('%r: could not read the groups of prefix %s (%s: %s); will try again in %.0fs',
                             self, self.prefix, type(exc).__name__, exc, self.groups_refresh)
        finally:
            self._groups_task = None
            if not self._closed:
                self._refresh_later()

    def group_joined(self, store: str, options: GroupOptions) -> None:
        """A group of this prefix was joined (heard on the channel, or by this process's own member)."""
        if self._targets is None:
            return  # the first send reads the registry, this group in it
        self._stores[store] = (options.max_length, options.max_age)
        self._targets = registry.targets(self.prefix, self._stores)

    def _heard_join(self, data: bytes) -> None:
        try:
            store, length, age = registry.notification(data)
        except ValueError as exc:
            self.bad_groups.warning(self.log, 'notification', 'Ignored a group notification of prefix %s: %s',
                                    self.prefix, exc)
            return
        self.group_joined(store, GroupOptions(max_length=length, max_age=age))

    def is_reply_address(self, reply_to: str) -> bool:
        """Whether ``reply_to`` is the answer address of the buses of this prefix, where answers may go."""
        return reply_to == self.reply_to

    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        if reply_to != self.reply_to:
            self.foreign_replies.warning(self.log, f'address {shown(reply_to)}',
                                         'Refused to answer to %s: not the RPC answer address of this bus (%s)',
                                         shown(reply_to), self.reply_to)
            return
        await self.redis.publish(*answer(reply_to, self.uid, envelope, self.legacy))

    async def subscribe(self, names: Collection[str], deliver: Deliver) -> None:
        self._deliver = deliver
        await self._listen([f'{self._head}{name}:*' for name in names])

    async def receive_replies(self, deliver: DeliverReply) -> None:
        self._deliver_reply = deliver
        await self._listen([f'{self.reply_to}:*'])

    async def _listen(self, patterns: list[str]) -> None:
        """Add patterns; return once Redis confirms them all, or ``subscribe_timeout`` passed (then
        the reading loop goes on trying, and says so)."""
        if self._closed:
            raise BackendClosed(f'{self!r} is closed')
        self._patterns.extend(patterns)
        loop = asyncio.get_running_loop()
        confirmed = [loop.create_future() for _ in patterns]
        for pattern, future in zip(patterns, confirmed, strict=True):
            self._confirm.setdefault(pattern.encode(), []).append(future)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name=f'redis-bus:{self.prefix}')
        elif self._pubsub is not None and patterns:
            with contextlib.suppress(*NETWORK_ERRORS):  # the reading loop will subscribe them again
                await self._pubsub.psubscribe(*patterns)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*confirmed)), self.subscribe_timeout)
        except TimeoutError:
            self.log.warning('%r: no confirmation of subscription %s yet; will keep trying',
                             self, ', '.join(patterns))

    async def _read(self) -> None:
        """The single reading loop: (re)subscribe every pattern, hand each message on."""
        failures = 0
        while not self._closed:
            pubsub = self._listener.pubsub()
            try:
                self._pubsub = pubsub
                await pubsub.psubscribe(*self._patterns)
                self._subscribed = True
                if failures and self._targets is not None:  # joins may have been missed meanwhile
                    with contextlib.suppress(*NETWORK_ERRORS):
                        await self._read_registry()
                if failures:
                    self.log.info('%r: subscribed again to %d patterns', self, len(self._patterns))
                    failures = 0
                await self._read_messages(pubsub)
            except asyncio.CancelledError:
                raise
            except NETWORK_ERRORS as exc:
                failures += 1
                delay = backoff(failures, 0.1, self.reconnect_cap)
                self.log.warning('%r: subscriber lost Redis (%s: %s); reconnect %d in %.1fs',
                                 self, type(exc).__name__, exc, failures, delay)
                if isinstance(self._listener, ClusterListener):
                    await self._listener.failed()  # the next attempt goes to another node
                await asyncio.sleep(delay)
            except Exception:  # a bug or a reply we cannot parse: the bus must keep receiving
                failures += 1
                delay = backoff(failures, 0.1, self.reconnect_cap)
                self.log.exception('%r: subscriber failed; subscribing again (%d) in %.1fs', self, failures, delay)
                await asyncio.sleep(delay)
            finally:
                self._pubsub = None
                self._subscribed = False
                with contextlib.suppress(Exception):  # the loop must go on whatever closing says
                    await pubsub.aclose()

    async def _read_messages(self, pubsub: PubSub) -> None:
        while True:
            # raw replies: [b'pmessage', pattern, channel, data] or [b'psubscribe', pattern, n]
            reply = await pubsub.parse_response(block=True)
            if not isinstance(reply, list):
                continue
            if reply[0] == b'pmessage':
                if reply[2] == self._groups_channel_raw:
                    self._heard_join(reply[3])
                    continue
                await self._dispatch(reply[2], reply[3])  # waits while the engine's backlog is full
            elif reply[0] == b'psubscribe':
                for future in self._confirm.pop(reply[1], ()):
                    if not future.done():
                        future.set_result(None)

    async def _dispatch(self, raw_channel: bytes, data: bytes) -> None:
        """One message: a signal, a request or an answer, framed or bare. Whatever it holds, it is
        delivered or dropped with a warning; a delivery that raises is logged, and reading goes on."""
        try:
            channel = raw_channel.decode()
        except UnicodeDecodeError as exc:
            self.log.warning('Dropped message on channel %s: %s: %s', shown(raw_channel), type(exc).__name__, exc)
            return
        parsed = parse_channel(self._head, channel)
        if parsed is None:
            return
        name, sender, request_id = parsed
        try:
            envelope = unframe(data, f'answer on channel {shown(channel)}' if name == RESPONSE_SIGNAL
                               else f'signal {name!r}')
        except FrameError as exc:
            self.log.warning('Dropped message on channel %s: %s', shown(channel), exc)
            return
        try:
            if name == RESPONSE_SIGNAL:
                if request_id and self._deliver_reply is not None:
                    await self._deliver_reply(answered(envelope, request_id))
            elif self._deliver is not None:
                if envelope.headers is not None and envelope.headers.get(REPLY_TO, self.reply_to) != self.reply_to:
                    self.foreign_replies.warning(
                        self.log, f'sender {shown(sender)}', 'Dropped signal %r from %s: its reply address %s is not '
                        'the RPC answer address of this bus (%s)', name, shown(sender),
                        shown(envelope.headers[REPLY_TO]), self.reply_to)
                    return
                if request_id:
                    envelope = request(envelope, request_id, self.reply_to)
                await self._deliver(name, sender, envelope)
        except Exception as exc:
            self.log.warning('Delivery of a message on channel %s failed (%s: %s)', shown(channel),
                             type(exc).__name__, exc, exc_info=exc)

    async def ping(self) -> None:
        """PING on the command connection; and, once something is subscribed, the subscriber must
        be subscribed now (not reconnecting), or signals would be missed."""
        if self._closed:
            raise BackendClosed(f'{self!r} is closed')
        await self.redis.ping()
        if self._patterns and not self._subscribed:
            raise ConnectionFailed(f'{self!r}: the subscriber is not subscribed (reconnecting to Redis)')

    async def close(self) -> None:
        self._closed = True
        if self._groups_timer is not None:
            self._groups_timer.cancel()
        if self._groups_task is not None:
            self._groups_task.cancel()
            await asyncio.gather(self._groups_task, return_exceptions=True)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for futures in self._confirm.values():
            for future in futures:
                future.cancel()
        self._confirm.clear()
        await self._listener.aclose()
        for connection in self._replicas.clients:
            with contextlib.suppress(Exception):  # a master's client that lost its server
                await connection.aclose()
        await self.redis.aclose()
