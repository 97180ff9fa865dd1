"""The Redis backend: pub/sub signals and reliable list queues, wire-compatible with microagent 1.x.

Two transports (``transport.py``), and the 1.x class names as thin constructors over engine and
transport: ``RedisSignalBus`` = bus engine + ``RedisBusTransport``, ``RedisBroker`` = broker engine
+ ``RedisQueueTransport``.

The wire. Redis has no message headers, so an envelope travels as the frame of ``message.frame``
(magic, JSON headers, newline, the 1.x body). With ``wire='1.x'`` a bus or broker sends the bare 1.x
body instead, which 1.x agents read (headers are then not carried; message ids and attempts still
work locally). Both formats are read always: a frame starts with 0x1E, which JSON never does.

Signals: one pattern-subscribed connection per bus, on the 1.x channels ``{prefix}:{name}:{sender}``
(an RPC request appends ``#{request-id}``; answers go to ``{prefix}:response:{bus uid}#{request-id}``).
The reading loop awaits each delivery (the engine's backpressure) and resubscribes by itself when
Redis restarts.

Queues: producers RPUSH, as 1.x does. A consumer moves messages atomically into its own in-flight
list and removes each one only once it is settled, so a process killed mid-handling loses nothing:
its heartbeat key expires and any live consumer of the queue puts the messages back. Every fetch
also (re)registers the consumer, so an in-flight list always has an owner others may reclaim; after
a failed fetch, the consumer returns what it does not hold before fetching again. Messages are
never rewritten in Redis: a retry, a dead letter or a requeue keeps the stored bytes, so the frame's
headers and message id survive them. Key names and Lua scripts live in ``redis_scripts``.

Redis Cluster (``redis+cluster://host:port,host:port/``, see ``redis_cluster``): the same scripts,
each queue's keys in the slot of its list; commands ride out a failover; ``wait_replicas`` bounds
what asynchronous replication can lose.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Collection, Coroutine, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar, cast

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, SlotNotCoveredError
from redis.exceptions import TimeoutError as RedisTimeoutError

from microagent.backends.redis import scripts as lua
from microagent.backends.redis.cluster import (
    FAILOVER_ERRORS,
    ClusterListener,
    cluster_client,
    connect_options,
    is_cluster,
)
from microagent.backends.redis.scripts import QueueKeys
from microagent.broker import DEFAULT_MAX_MESSAGE_SIZE, AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.dsn import hide_password
from microagent.errors import BackendClosed, ConnectionFailed, InvalidArgument, NotReplicated, QueueNotFound
from microagent.message import FRAME_MAGIC, REPLY_TO, REQUEST_ID, Envelope, FrameError, frame, unframe
from microagent.queue import Queue, topics_match
from microagent.retry import backoff
from microagent.signal import RESPONSE_SIGNAL
from microagent.transport import NO_CONTEXT, DeadLetter, Deliver, DeliverReply, Delivery, SelectDeadLetter

__all__ = ['RedisBroker', 'RedisBusTransport', 'RedisQueueTransport', 'RedisSignalBus', 'Wire']

try:  # redis[hiredis], the extra microagent[redis] installs
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - a plain redis-py
    _hiredis_pack = None  # type: ignore[assignment]

T = TypeVar('T')

DEFAULT_DSN = 'redis://localhost:6379/0'
#: how long (s) commands on a Redis Cluster retry while a master fails over, by default
FAILOVER_TIMEOUT = 20.0
_NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)

#: what a Redis bus or broker sends: the framed envelope (default) or the bare 1.x body
Wire = Literal['envelope', '1.x']
WIRES: tuple[Wire, ...] = ('envelope', '1.x')


def _wire(wire: str) -> bool:
    """True for the 1.x wire; an unknown name is an error rather than a silent default."""
    if wire not in WIRES:
        raise InvalidArgument(f"wire must be 'envelope' or '1.x', got {wire!r}")
    return wire == '1.x'


class _HiredisPacking(Connection):
    """A TCP connection that packs commands with hiredis' C packer. redis-py's asyncio connection packs
    in Python, about a microsecond per argument: more than a message's whole envelope costs, on the
    producer's and the consumer's hot paths (RPUSH of a batch, the fetch and ack scripts)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        command = args[0]
        if (isinstance(command, str) and ' ' in command) or (isinstance(command, bytes) and b' ' in command):
            args = (*command.split(), *args[1:])  # 'CLIENT SETNAME': words are arguments, as redis-py does
        try:
            return [_hiredis_pack(args)]
        except TypeError:  # an argument hiredis cannot pack: redis-py packs it, or says why it cannot
            return super().pack_command(*args)


#: the command client: one server's, or a cluster's (``redis+cluster://``, see ``redis_cluster``)
Client = Redis | RedisCluster


def _client(dsn: str, options: dict[str, Any], reader: bool = False,
            failover_timeout: float = FAILOVER_TIMEOUT) -> Client:
    """A client from the DSN (``rediss://``, user, password and db are honoured by redis-py).

    Commands retry a few times on a connection error (redis-py's ``from_url`` default is none).
    A ``reader`` (blocking reads of the subscriber and consumers) has no redis-py retries, so our
    loop logs and backs off, and no socket timeout: redis-py's default 5 s would kill an idle
    reader, and on Python 3.11 its ``wait_for`` around sends can swallow a cancellation. Its
    calls are bounded by ``asyncio.timeout`` instead, and TCP keepalive finds dead peers.
    A cluster DSN gives a cluster client, whose commands ride out a failover (not the reader's)."""
    if is_cluster(dsn):
        return cluster_client(dsn, options, reader=reader, failover_timeout=failover_timeout)
    if reader:
        options = {**options, 'retry': Retry(NoBackoff(), 0), 'socket_timeout': None}
    else:  # a pooled connection left stale by a server restart reconnects instead of failing a send
        options = {'retry': Retry(ExponentialBackoff(cap=1.0, base=0.05), 3), **options}
    if _hiredis_pack is not None and 'encoding' not in options and 'connection_class' not in options:
        options['connection_class'] = _HiredisPacking  # unix:// and rediss:// keep their own class
    return Redis.from_url(dsn, **options)


def _shown(text: str | bytes, limit: int = 200) -> str:
    """A channel from the wire, safe for a log line (no control characters, bounded)."""
    if isinstance(text, str) and text.isprintable() and len(text) <= limit:
        return text
    return repr(text[:limit])


# frames read lazily

_headers_decoder = msgspec.json.Decoder(dict[str, str])
_headers_encoder = msgspec.json.Encoder()
_HEADERS_AT = len(FRAME_MAGIC)


class _FrameHeaders(Mapping[str, str]):
    """The headers of a frame, parsed on first use: a consumer whose handlers never ask for their
    ``message`` never pays for JSON it does not need. ``_read_frame`` checked the header line's
    shape; should its JSON still be invalid, the first use raises the ``FrameError``."""

    __slots__ = ('_data', '_end', '_parsed', '_target')

    def __init__(self, data: bytes, end: int, target: str) -> None:
        self._data = data  # the whole frame; the header line is data[len(FRAME_MAGIC):end]
        self._end = end
        self._target = target
        self._parsed: dict[str, str] | None = None

    def _headers(self) -> dict[str, str]:
        parsed = self._parsed
        if parsed is None:
            try:
                parsed = self._parsed = _headers_decoder.decode(self._data[_HEADERS_AT:self._end])
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                raise FrameError(self._target, [f'envelope headers are not a JSON object of strings: {exc}']) from None
        return parsed

    def __getitem__(self, name: str) -> str:
        return self._headers()[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._headers().get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._headers()

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers())

    def __len__(self) -> int:
        return len(self._headers())

    def __eq__(self, other: object) -> bool:
        return self._headers() == other

    __hash__ = None  # type: ignore[assignment]  # a mapping, as a dict

    def __repr__(self) -> str:
        return f'<headers {self._data[_HEADERS_AT:min(self._end, 200)]!r}>'


_new_envelope = tuple.__new__  # Envelope(...) without its Python-level __new__: the consumer's hot path


def _read_frame(data: bytes, target: str) -> Envelope:
    """The envelope in stored bytes, its headers left unparsed: ``unframe``'s checks but the JSON's
    (the magic, an end of the header line, a line shaped like a JSON object). Raises ``FrameError``."""
    if not data or data[0] != 0x1E:
        return _new_envelope(Envelope, (data, None))
    end = data.find(b'\n', _HEADERS_AT)
    if end < 0 or data[end - 1] != 0x7D or data[_HEADERS_AT] != 0x7B or not data.startswith(FRAME_MAGIC):
        return unframe(data, target)  # raises the FrameError that says what is wrong, or parses all
    return _new_envelope(Envelope, (data[end + 1:], _FrameHeaders(data, end, target)))


# signals


class RedisBusTransport:
    """Signals over Redis pub/sub on the 1.x channels (``BusTransport``).

    ``wire='1.x'`` sends bare 1.x bodies; frames and bare bodies are read always. An RPC request that
    came bare (from a 1.x agent) is answered bare, whatever the wire, so a 1.x caller can read it."""

    #: cap of the delay between reconnection attempts of the subscriber, in seconds
    reconnect_cap: float = 5.0
    #: how long ``subscribe`` waits for Redis to confirm before going on (the loop keeps trying)
    subscribe_timeout: float = 5.0
    #: how many bare requests are remembered until answered (answers to older ones go framed)
    bare_requests_kept: int = 10_000

    def __init__(self, dsn: str = DEFAULT_DSN, prefix: str = 'PUBSUB', *, log: logging.Logger | None = None,
                 wire: Wire = 'envelope', failover_timeout: float = FAILOVER_TIMEOUT, **redis_options: Any) -> None:
        self.dsn = dsn
        self.prefix = prefix
        self.uid = uuid.uuid4().hex  # the answers' channel, as 1.x: {prefix}:response:{uid}#{request id}
        self.legacy = _wire(wire)
        self.log = log or logging.getLogger('microagent.redis')
        self.redis = _client(dsn, redis_options, failover_timeout=failover_timeout)
        # a cluster's PUBLISH reaches every node: the subscriber listens on one, and moves on when lost
        self._listener: Redis | ClusterListener = (
            ClusterListener(dsn, redis_options, self.redis) if isinstance(self.redis, RedisCluster)
            else cast(Redis, _client(dsn, redis_options, reader=True)))
        self._head = f'{prefix}:'
        self._patterns: list[str] = []
        self._confirm: dict[bytes, list[asyncio.Future[None]]] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._deliver: Deliver | None = None
        self._deliver_reply: DeliverReply | None = None
        self._bare_requests: OrderedDict[str, None] = OrderedDict()
        self._subscribed = False  # the reading loop holds a live subscription to every pattern
        self._closed = False

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {hide_password(self.dsn)} {self.prefix}>'

    @property
    def reply_to(self) -> str:
        return f'{self.prefix}:{RESPONSE_SIGNAL}'

    def _data(self, envelope: Envelope) -> bytes:
        return envelope.body if self.legacy or envelope.headers is None else frame(envelope.body, envelope.headers)

    async def publish(self, name: str, sender: str, envelope: Envelope) -> None:
        headers = envelope.headers
        request_id = headers.get(REQUEST_ID) if headers else None
        channel = f'{self._head}{name}:{sender}#{request_id}' if request_id else f'{self._head}{name}:{sender}'
        await self.redis.publish(channel, self._data(envelope))

    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        request_id = envelope.headers.get(REQUEST_ID, '') if envelope.headers else ''
        bare = request_id in self._bare_requests
        if bare:
            del self._bare_requests[request_id]
        data = envelope.body if bare else self._data(envelope)
        await self.redis.publish(f'{reply_to}:{self.uid}#{request_id}', data)

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
            with contextlib.suppress(*_NETWORK_ERRORS):  # the reading loop will subscribe them again
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
                if failures:
                    self.log.info('%r: subscribed again to %d patterns', self, len(self._patterns))
                    failures = 0
                await self._read_messages(pubsub)
            except asyncio.CancelledError:
                raise
            except _NETWORK_ERRORS as exc:
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
            self.log.warning('Dropped message on channel %s: %s: %s', _shown(raw_channel), type(exc).__name__, exc)
            return
        if not channel.startswith(self._head):
            return
        name, _, rest = channel[len(self._head):].partition(':')
        sender, _, request_id = rest.partition('#')
        try:
            envelope = unframe(data, f'answer on channel {_shown(channel)}' if name == RESPONSE_SIGNAL
                               else f'signal {name!r}')
        except FrameError as exc:
            self.log.warning('Dropped message on channel %s: %s', _shown(channel), exc)
            return
        try:
            if name == RESPONSE_SIGNAL:
                if request_id and self._deliver_reply is not None:
                    await self._deliver_reply(self._addressed(envelope, request_id, None))
            elif self._deliver is not None:
                if request_id:
                    if envelope.headers is None:
                        self._remember_bare(request_id)
                    envelope = self._addressed(envelope, request_id, self.reply_to)
                await self._deliver(name, sender, envelope)
        except Exception as exc:
            self.log.warning('Delivery of a message on channel %s failed (%s: %s)', _shown(channel),
                             type(exc).__name__, exc, exc_info=exc)

    @staticmethod
    def _addressed(envelope: Envelope, request_id: str, reply_to: str | None) -> Envelope:
        """The RPC addresses of the 1.x channel, where the headers lack them (a bare body)."""
        headers = envelope.headers
        if headers is not None and REQUEST_ID in headers and (reply_to is None or REPLY_TO in headers):
            return envelope
        added = dict(headers or {})
        added.setdefault(REQUEST_ID, request_id)
        if reply_to is not None:
            added.setdefault(REPLY_TO, reply_to)
        return Envelope(envelope.body, added)

    def _remember_bare(self, request_id: str) -> None:
        bare = self._bare_requests
        bare[request_id] = None
        if len(bare) > self.bare_requests_kept:
            bare.popitem(last=False)

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
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for futures in self._confirm.values():
            for future in futures:
                future.cancel()
        self._confirm.clear()
        await self._listener.aclose()
        await self.redis.aclose()


# queues


class _Owned:
    """What a consumer took from one queue and has not settled: the in-flight list's expected content."""

    def __init__(self, keys: QueueKeys) -> None:
        self.keys = keys
        self.target = f'queue {keys.queue!r}'  # how a FrameError names the queue
        self.held: Counter[bytes] = Counter()
        self.lock = asyncio.Lock()  # one fetch or resync at a time
        self.dirty = False  # a settle or fetch failed: the in-flight list may hold orphans
        self.beaten = False  # registered once: a later registration means it was taken for dead
        self.rechecks = 0  # resyncs still due after a failed fetch (see ``lost_a_fetch``)
        self.master: str | None = None  # on a cluster, the node that held the queue's slot at the last beat
        self.acks: list[bytes] = []  # acked, not sent yet
        self.flushing: asyncio.Task[None] | None = None

    def lost_a_fetch(self) -> None:
        """A fetch failed: the server may have moved messages that never reached us. Resync twice:
        the second, a full round trip later, also finds those moved by a command the server held
        (asleep, paused) and ran on the dead connection while the first resync was under way."""
        self.dirty = True
        self.rechecks = 2

    def take(self, messages: list[bytes]) -> None:
        self.held.update(messages)

    def drop(self, messages: list[bytes]) -> None:
        held = self.held
        for message in messages:
            left = held[message] - 1
            if left > 0:
                held[message] = left
            else:
                del held[message]


class _Malformed(Delivery[bytes]):
    """A fetched message whose frame is malformed. Reading its envelope raises the ``FrameError`` (an
    ``InvalidPayload`` naming the queue) inside the engine's decoding, so it is dead-lettered like
    any undecodable body, with the stored bytes."""

    __slots__ = ('_target',)

    def __init__(self, data: bytes, target: str, attempt: int = 1, redelivered: bool = False) -> None:
        self.token = data
        self._target = target
        self.attempt = attempt
        self.redelivered = redelivered
        self.context = NO_CONTEXT

    @property
    def envelope(self) -> Envelope:  # type: ignore[override]  # read-only: nothing to set
        return unframe(self.token, self._target)  # raises

    def __repr__(self) -> str:
        return f'<Delivery attempt {self.attempt} (malformed frame): {self.token[:60]!r}>'


def _delivery(data: bytes, target: str, attempt: int = 1, redelivered: bool = False) -> Delivery[bytes]:
    """The delivery of stored bytes; ``token`` is those bytes. Frames are checked here, their headers
    parsed only on use (see ``_FrameHeaders``)."""
    try:
        return Delivery(_read_frame(data, target), data, attempt, redelivered)
    except FrameError:
        return _Malformed(data, target, attempt, redelivered)


def _delayed_member(data: bytes) -> bytes:
    """A unique ``Q:delayed`` member for the message: 32 characters of id, then the message."""
    return uuid.uuid4().hex.encode() + data


def _master_of(cluster: RedisCluster, key: str) -> ClusterNode | None:
    """The master of ``key``'s slot in the client's slot map; None before it has one."""
    try:
        return cluster.get_node_from_key(key)
    except SlotNotCoveredError:
        return None


class RedisQueueTransport:
    """Reliable queues on Redis lists (``BrokerTransport``).

    ``heartbeat`` is how long (s) a silent consumer is trusted before its in-flight messages go back
    to the queue. ``wire='1.x'`` stores bare 1.x bodies, which 1.x consumers pop; frames and bare
    bodies are consumed always. Attempts are counted per stored message: per message id with frames;
    bare bodies that are byte for byte identical share one count."""

    fetch_cancel_safe = True
    send_options: frozenset[str] = frozenset()
    unsettled_fate = "it stays in this consumer's in-flight list until the next heartbeat returns it to the queue"
    #: how long a read may take beyond its blocking time before the connection is deemed dead
    read_margin: float = 5.0
    #: how long ``close`` may try to give back in-flight messages before it just closes connections
    close_timeout: float = 5.0
    #: acks are sent together, at most this many seconds after the first of them
    ack_delay: float = 0.002

    def __init__(self, dsn: str = DEFAULT_DSN, *, log: logging.Logger | None = None, wire: Wire = 'envelope',
                 heartbeat: float = 10.0, wait_replicas: int = 0, wait_timeout: float = 1.0,
                 failover_timeout: float = FAILOVER_TIMEOUT, **redis_options: Any) -> None:
        if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float) or not 0 < heartbeat < math.inf:
            raise InvalidArgument(f'heartbeat must be positive (seconds), got {heartbeat!r}')
        if isinstance(wait_replicas, bool) or not isinstance(wait_replicas, int) or wait_replicas < 0:
            raise InvalidArgument(f'wait_replicas must be a count of replicas (0: do not wait), got {wait_replicas!r}')
        if not 0 < wait_timeout < math.inf:
            raise InvalidArgument(f'wait_timeout must be positive (seconds), got {wait_timeout!r}')
        self.dsn = dsn
        self.legacy = _wire(wire)
        self.heartbeat = float(heartbeat)
        self.wait_replicas = wait_replicas
        self.wait_timeout = float(wait_timeout)
        self.failover_timeout = float(failover_timeout)
        self.uid = uuid.uuid4().hex  # this consumer, in key names: Q:inflight:{uid}, Q:consumer:{uid}
        self.log = log or logging.getLogger('microagent.redis')
        self.redis = _client(dsn, redis_options, failover_timeout=failover_timeout)
        self.cluster = isinstance(self.redis, RedisCluster)
        self._redis_options = redis_options
        self._node_clients: dict[str, Redis] = {}  # wait_replicas on a cluster: a plain client per master
        self._blocking = _client(dsn, redis_options, reader=True)
        self._scripts = {name: self.redis.register_script(getattr(lua, name))
                         for name in ('FETCH', 'ACK', 'RETRY', 'DEAD_LETTER', 'RELEASE', 'RECLAIM',
                                      'REQUEUE', 'REMOVE_DEAD', 'MOVE_DUE', 'DELAY', 'BEAT')}
        self._fetch_script = self._blocking.register_script(lua.FETCH)
        self._owned: dict[str, _Owned] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._closing = False

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {hide_password(self.dsn)}>'

    def _script(self, name: str) -> AsyncScript:
        return self._scripts[name]

    def _keys(self, name: str) -> QueueKeys:
        return QueueKeys.of(name, self.uid, self.cluster)

    def _stored(self, envelopes: Sequence[Envelope]) -> list[bytes]:
        """What Redis stores for each envelope: its frame (``message.frame``, inlined: this is the
        producer's hot path), or with the 1.x wire the bare body."""
        if self.legacy:
            return [envelope.body for envelope in envelopes]
        encode = _headers_encoder.encode
        try:
            return [body if headers is None else FRAME_MAGIC + encode(headers) + b'\n' + body
                    for body, headers in envelopes]
        except TypeError:  # headers in a mapping msgspec does not encode (not a dict): the general way
            return [frame(body, headers) for body, headers in envelopes]

    # producing

    async def declare(self, queue: Queue[Any]) -> None:
        if queue.exchange:  # the binding lives on the server, for every process that publishes
            await self.redis.hset(lua.exchange_key(queue.exchange), queue.name, msgspec.json.encode(queue.topics))

    async def put(self, queue: Queue[Any], envelopes: Sequence[Envelope], *, delay: float = 0.0,
                  **options: Any) -> None:
        # no ``send_options``: the engine refuses every other keyword, so ``options`` is always empty
        messages = self._stored(envelopes)
        if delay <= 0:
            if self.wait_replicas:
                await self._replicated(queue.name, 'RPUSH', queue.name, *messages)
            else:
                await self.redis.rpush(queue.name, *messages)
            return
        # fresh messages: beside the retries in Q:delayed, but with no attempt count written for them
        keys = self._keys(queue.name)
        members = list(map(_delayed_member, messages))
        if self.wait_replicas:
            await self._replicated(queue.name, 'EVAL', lua.DELAY, 1, keys.delayed, delay, *members)
        else:
            await self._script('DELAY')(keys=[keys.delayed], args=[delay, *members])
        self._wake_when_due(keys, delay)

    async def _replicated(self, key: str, *command: Any) -> Any:
        """Run ``command`` on the master of ``key``, then ``WAIT`` on the same connection until
        ``wait_replicas`` replicas have it (``NotReplicated`` if fewer did in ``wait_timeout``).
        On a cluster, a stale slot map (a failover, a resharding) is refreshed and the command sent
        again, for up to ``failover_timeout`` s: a command that may have run is then run twice (at
        least once, as every retried send)."""
        deadline = time.monotonic() + self.failover_timeout
        failures = 0
        while True:
            client = await self._master_client(key)
            try:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.execute_command(*command)
                    pipe.execute_command('WAIT', self.wait_replicas, int(self.wait_timeout * 1000))
                    result, acked = await pipe.execute()
                break
            except (*FAILOVER_ERRORS, MovedError) as exc:
                if client is self.redis or time.monotonic() > deadline:
                    raise
                failures += 1
                await self._refresh_slots(key, exc)
                await asyncio.sleep(backoff(failures, 0.05, 0.5))
        if int(acked) < self.wait_replicas:
            raise NotReplicated(f'{self.wait_replicas} replicas asked, {acked} confirmed within '
                                f'{self.wait_timeout}s; the message is on the master and is lost if it fails now')
        return result

    async def _master_client(self, key: str) -> Client:
        """One server's client; on a cluster a plain client to the master of ``key``'s slot (WAIT
        counts the writes of its own connection, which a cluster client's pool does not keep)."""
        if not isinstance(self.redis, RedisCluster):
            return self.redis
        node = _master_of(self.redis, key)
        if node is None:  # no slot map yet (nothing sent), or the slot is not covered now
            await self.redis.initialize()
            node = _master_of(self.redis, key)
            if node is None:
                raise NotReplicated(f'no master serves the slot of {key!r} now; the message was not sent')
        client = self._node_clients.get(node.name)
        if client is None:
            _, options = connect_options(self.dsn)
            client = self._node_clients[node.name] = Redis(
                host=node.host, port=int(node.port), **{**options, **self._redis_options})
        return client

    async def _refresh_slots(self, key: str, exc: Exception) -> None:
        """After a MOVED or a lost master, a keyed command through the cluster client updates its
        slot map (and rides out the failover)."""
        self.log.info('Queue %s: the master of its slot changed (%s: %s); sending again', key, type(exc).__name__, exc)
        assert isinstance(self.redis, RedisCluster)
        with contextlib.suppress(*FAILOVER_ERRORS):
            await self.redis.exists(key)

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> int:
        """Push to every queue whose binding, stored in Redis by whoever declared it, takes the
        routing key, all or none; return how many."""
        bound = await self.redis.hgetall(lua.exchange_key(exchange))
        targets = [name.decode() if isinstance(name, bytes) else name for name, topics in bound.items()
                   if topics_match(tuple(msgspec.json.decode(topics, type=list[str])), routing_key)]
        if not targets:
            raise QueueNotFound(f'No queue is bound to exchange {exchange!r} for key {routing_key!r}')
        (data,) = self._stored([envelope])
        if self.wait_replicas:  # each queue on its master, each copy confirmed
            await asyncio.gather(*(self._replicated(name, 'RPUSH', name, data) for name in targets))
        elif self.cluster:  # queues in several slots: no transaction spans them
            await asyncio.gather(*(self.redis.rpush(name, data) for name in targets))
        else:
            async with self.redis.pipeline(transaction=True) as pipe:
                for name in targets:
                    pipe.rpush(name, data)
                await pipe.execute()
        return len(targets)

    async def length(self, name: str) -> int:
        return int(await self.redis.llen(name))

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
                    messages, attempts, _ = await self._take(keys, count - 1, first)
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
            return [_delivery(message, target) for message in messages]
        return [_delivery(message, target, abs(attempt), attempt < 0)
                for message, attempt in zip(messages, attempts, strict=True)]

    async def _take(self, keys: QueueKeys, count: int, first: bytes | None = None,
                    ) -> tuple[list[bytes], list[int], float]:
        args: list[Any] = [count, self.uid, int(self.heartbeat * 1000)]
        if first is not None:
            args.append(first)
        async with asyncio.timeout(self.read_margin):
            reply = await self._fetch_script(
                keys=[keys.queue, keys.inflight, keys.attempts, keys.delayed, keys.consumers, keys.heartbeat],
                args=args)
        messages, attempts, wait = reply
        return messages, attempts, float(wait)

    async def ack(self, queue: Queue[Any], delivery: Delivery[bytes]) -> None:
        """Acks of ``ack_delay`` seconds go in one round trip, sent in the background: the handler's
        slot is free at once. Until sent, the message stays in our in-flight list (held), so a
        crash redelivers it; a failed send makes it an orphan that the next heartbeat requeues."""
        owned = self._owned[queue.name]
        owned.acks.append(delivery.token)
        if owned.flushing is None:
            owned.flushing = self._spawn(self._flush_acks(owned))

    async def _flush_acks(self, owned: _Owned) -> None:
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
            self._spawn(self._quietly(keys.queue, self._script('MOVE_DUE')(keys=[keys.queue, keys.delayed])))
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
            await self._script('RELEASE')(keys=[owned.keys.inflight, owned.keys.queue, owned.keys.attempts],
                                          args=messages)
        except Exception:
            owned.dirty = True  # the next resync returns them
            raise
        finally:
            owned.drop(messages)

    async def _settle(self, owned: _Owned, delivery: Delivery[bytes], action: str, operation: Awaitable[Any]) -> None:
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

    # ownership: heartbeat, reclaiming dead consumers, orphans

    async def _register(self, name: str) -> _Owned:
        if self._closing:
            raise BackendClosed(f'{self!r} is closed')
        owned = self._owned.get(name)
        if owned is None:
            owned = self._owned[name] = _Owned(self._keys(name))
            if self._heartbeat_task is None:  # first, so that it beats even if this beat fails
                self._start_heartbeat()
            await self._beat(owned)
        return owned

    def _start_heartbeat(self) -> None:
        task = asyncio.create_task(self._heartbeats(), name='redis-broker:heartbeat')
        task.add_done_callback(self._heartbeat_ended)
        self._heartbeat_task = task

    def _heartbeat_ended(self, task: asyncio.Task[None]) -> None:
        """Without a heartbeat others reclaim what this consumer holds: never let it stay dead."""
        if self._closing or task.cancelled():
            return
        exc = task.exception()
        self.log.error('%r: the heartbeat task ended (%s: %s); restarting it', self,
                       type(exc).__name__, exc, exc_info=exc)
        self._start_heartbeat()

    async def _beat(self, owned: _Owned) -> None:
        keys = owned.keys
        added = await self._script('BEAT')(keys=[keys.heartbeat, keys.consumers],
                                           args=[int(self.heartbeat * 1000), self.uid])
        if isinstance(self.redis, RedisCluster):
            self._check_master(owned)
        if added and owned.beaten:
            self.log.warning('Queue %s: this consumer was taken for dead (no heartbeat for %.0fs) and is '
                             'registered again; what it had in flight went back to the queue and may be '
                             'handled twice', keys.queue, self.heartbeat)
        owned.beaten = True
        members = cast(set[bytes], await self.redis.smembers(keys.consumers))
        reclaimed = await self._reclaim(keys, [c.decode() for c in members if c.decode() != self.uid])
        if reclaimed:
            self.log.warning('Queue %s: %d messages of dead consumers returned to the queue',
                             keys.queue, reclaimed)
        if owned.dirty:
            await self._resync(owned)

    def _check_master(self, owned: _Owned) -> None:
        """A new master of the queue's slot (a failover) may lack our last writes: an ack, a retry, a
        release acked by the old master and never replicated puts a settled message back in our
        in-flight list. Resync: whatever no handler holds goes back to the queue."""
        assert isinstance(self.redis, RedisCluster)
        node = _master_of(self.redis, owned.keys.queue)
        if node is None:
            return
        master = node.name
        if owned.master is not None and master != owned.master:
            self.log.warning('Queue %s: its slot moved from %s to %s (a failover?); checking what is in flight',
                             owned.keys.queue, owned.master, master)
            owned.lost_a_fetch()
        owned.master = master

    async def _reclaim(self, keys: QueueKeys, consumers: list[str]) -> int:
        if not consumers:
            return 0
        pairs = [k for c in consumers for k in (keys.heartbeat_of(c), keys.inflight_of(c))]
        return int(await self._script('RECLAIM')(keys=[keys.consumers, keys.queue, keys.attempts, *pairs],
                                                 args=consumers))

    async def _heartbeats(self) -> None:
        """Beat for every queue until closed. Any error (lost server, OOM, a bug) is logged and
        retried with backoff: the heartbeat must outlive every episode the consumer outlives."""
        failures = 0
        while True:
            await asyncio.sleep(self.heartbeat / 3 if not failures else backoff(failures, 0.1, self.heartbeat / 3))
            failed = False
            for owned in list(self._owned.values()):
                try:
                    await self._beat(owned)
                except Exception as exc:
                    failed = True
                    self.log.warning('%r: heartbeat of queue %s failed (%s: %s); retry %d in %.1fs', self,
                                     owned.keys.queue, type(exc).__name__, exc, failures + 1,
                                     backoff(failures + 1, 0.1, self.heartbeat / 3))
            failures = failures + 1 if failed else 0

    async def _resync(self, owned: _Owned) -> None:
        async with owned.lock:
            await self._return_orphans(owned)

    async def _return_orphans_on_stop(self, owned: _Owned) -> None:
        try:
            await self._return_orphans(owned)
        except Exception as exc:
            self.log.warning('Queue %s: could not check the in-flight list after a cancelled fetch (%s: %s); '
                             'close returns it, or else a consumer of the queue once this heartbeat expires',
                             owned.keys.queue, type(exc).__name__, exc)

    async def _return_orphans(self, owned: _Owned) -> None:
        """Return to the queue whatever sits in our in-flight list that no handler holds
        (the caller holds ``owned.lock``, so no fetch is between Redis and ``owned.held``).
        Stays ``dirty`` (tried again later) unless it completes and no recheck is due."""
        owned.dirty = True
        keys = owned.keys
        async with asyncio.timeout(self.read_margin):
            listed = cast(list[bytes], await self.redis.lrange(keys.inflight, 0, -1))
            orphans = list((Counter(listed) - owned.held).elements())
            if orphans:
                await self._script('RELEASE')(keys=[keys.inflight, keys.queue, keys.attempts], args=orphans)
        if orphans:
            self.log.warning('Queue %s: %d unsettled messages returned to the queue', keys.queue, len(orphans))
        owned.rechecks = max(owned.rechecks - 1, 0)
        owned.dirty = owned.rechecks > 0

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
            moved = int(await self._script('REQUEUE')(keys=[self._keys(name).dead, name], args=[chunk]))
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
            total += int(await self._script('REMOVE_DEAD')(keys=[self._keys(name).dead, name],
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

    async def _give_back(self, owned: _Owned) -> None:
        keys = owned.keys
        try:
            await self.redis.delete(keys.heartbeat)
            await self._reclaim(keys, [self.uid])
        except Exception as exc:
            self.log.warning('%r: could not return the in-flight messages of queue %s (%s: %s); '
                             'a consumer of the queue returns them once this heartbeat expires '
                             '(%.0fs after the last beat)', self, keys.queue, type(exc).__name__, exc,
                             self.heartbeat)

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
        for client in (self._blocking, self.redis, *self._node_clients.values()):
            try:
                async with asyncio.timeout(self.read_margin):
                    await client.aclose()
            except Exception as exc:
                self.log.warning('%r: closing a connection failed (%s: %s)', self, type(exc).__name__, exc)

    async def _return_held(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for owned in self._owned.values():
            await self._give_back(owned)

    def _abandon(self, owned_queues: list[_Owned], what: str) -> None:
        """Giving back ran out of time: say what may stay in flight and who will return it."""
        for owned in owned_queues:
            self.log.warning('%r: %s gave up after %.1fs; queue %s: %d messages taken here are '
                             'unsettled (%d acks unsent); whatever stays in flight goes back to the queue when a '
                             'consumer of it finds this heartbeat expired (%.0fs after the last beat)', self,
                             what, self.close_timeout, owned.keys.queue, sum(owned.held.values()), len(owned.acks),
                             self.heartbeat)


# the 1.x names: engine + transport


class RedisSignalBus(AbstractSignalBus):
    """Signals over Redis pub/sub: ``RedisSignalBus('redis://localhost/7', prefix='MYAPP')``, or on
    a Redis Cluster ``RedisSignalBus('redis+cluster://host1:7000,host2:7000/')``.

    ``wire='1.x'`` sends bare 1.x bodies, for 1.x agents listening on the same Redis. Extra keyword
    options go to ``redis.asyncio.Redis.from_url`` (e.g. ``socket_timeout``), or to ``RedisCluster``;
    on a cluster, sends retry for up to ``failover_timeout`` s while a master fails over. The
    transport is ``bus.transport``."""

    transport: RedisBusTransport

    def __init__(self, dsn: str = DEFAULT_DSN, prefix: str = 'PUBSUB', log: logging.Logger | None = None, *,
                 wire: Wire = 'envelope', max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 failover_timeout: float = FAILOVER_TIMEOUT, **redis_options: Any) -> None:
        transport = RedisBusTransport(dsn, prefix, log=log, wire=wire, failover_timeout=failover_timeout,
                                      **redis_options)
        super().__init__(transport, dsn=dsn, prefix=prefix, log=log, max_message_size=max_message_size)

    @property
    def redis(self) -> Client:
        """The transport's command client, which code written for the former class reaches for."""
        return self.transport.redis


class RedisBroker(AbstractQueueBroker):
    """Reliable queues on Redis lists: ``RedisBroker('redis://localhost/7')``, or on a Redis Cluster
    ``RedisBroker('redis+cluster://host1:7000,host2:7000/')`` (keys of a queue in its list's slot).

    ``heartbeat`` is how long (s) a silent consumer is trusted before its in-flight messages go back
    to the queue; ``wire='1.x'`` stores bare 1.x bodies, for 1.x consumers of the same queues.
    Replication is asynchronous: a master that fails loses the writes it acked and had not passed
    on yet. ``wait_replicas=1`` makes a send return only once a replica has the message
    (``WAIT``; ``NotReplicated`` after ``wait_timeout`` s). On a cluster, commands retry for up to
    ``failover_timeout`` s while a master fails over. Extra keyword options go to
    ``redis.asyncio.Redis.from_url`` (or ``RedisCluster``). The transport is ``broker.transport``."""

    transport: RedisQueueTransport

    def __init__(self, dsn: str = DEFAULT_DSN, log: logging.Logger | None = None, *, wire: Wire = 'envelope',
                 heartbeat: float = 10.0, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 wait_replicas: int = 0, wait_timeout: float = 1.0, failover_timeout: float = FAILOVER_TIMEOUT,
                 **redis_options: Any) -> None:
        transport = RedisQueueTransport(dsn, log=log, wire=wire, heartbeat=heartbeat, wait_replicas=wait_replicas,
                                        wait_timeout=wait_timeout, failover_timeout=failover_timeout,
                                        **redis_options)
        super().__init__(transport, dsn=dsn, log=log, max_message_size=max_message_size)

    @property
    def redis(self) -> Client:
        """The transport's command client, which code written for the former class reaches for."""
        return self.transport.redis
