"""RabbitMQ backend on aiormq: ``AMQPQueueTransport`` (durable queues) and ``AMQPBusTransport`` (a
topic exchange), and the 1.x names ``AMQPBroker`` and ``AMQPSignalBus`` = the engine over them.

Layout on the server, for a queue ``mailer``:

* ``mailer``: a durable queue, fed through the default exchange; bound to the queue's ``exchange``
  with the type that exchange is declared with (``Exchange``, or implied by the queue's form);
* ``mailer.retry.{ms}``: delay queues (queue TTL, dead-lettered back to ``mailer``) that hold a
  failed message until its retry is due, or a message sent with ``delay``; they expire when unused;
* ``mailer.dead``: a fanout exchange and a durable queue holding dead letters, with the reason,
  the attempt count and the time in headers.

Queues are classic by default; ``queue_type='quorum'`` (on the broker, or per ``Queue``) declares
all three as replicated quorum queues, and RabbitMQ itself dead-letters into ``mailer.dead`` what
comes back unacknowledged more than ``delivery_limit`` times (see ``amqp_queue_args``). The DSN may
name several hosts of a cluster (``amqp://u:p@h1,h2,h3/vhost``, see ``amqp_hosts``).

Headers travel natively: the envelope's headers are the AMQP headers table, ``message-id`` is also
the ``message_id`` property (and on queues ``correlation-id`` the ``correlation_id`` one), so plain
AMQP clients see them where they look. This backend's own bookkeeping sits beside them in
``x-attempt``, ``x-reason`` and ``x-dead-at``, never shown to users as headers. A message from a
1.x sender has no table: it arrives with no headers, or only the ``message-id`` of its properties.

Signals go to the topic exchange named by the bus prefix with routing key ``{name}.{sender}``; each
bus reads one exclusive auto-delete queue, and RPC answers go straight to the caller's queue
(``reply_to``) with the request id as correlation id, as 1.x peers expect.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import aiormq
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec
from pamqp.common import FieldTable

from microagent.backends.amqp.link import LINK_ERRORS, Link, Outgoing, Publisher
from microagent.backends.amqp.queue_args import (
    DEFAULT_DELIVERY_LIMIT,
    QueueArguments,
    declaration_error,
    existing_type,
    server_version,
)
from microagent.broker import AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.errors import ConnectionFailed, DeclarationError, QueueNotFound, UsageError
from microagent.exchange import Exchange
from microagent.message import CORRELATION_ID, MESSAGE_ID, REPLY_TO, REQUEST_ID, Envelope
from microagent.queue import Queue, QueueType, check_delivery_limit, check_queue_type
from microagent.retry import Retrier
from microagent.signal import RESPONSE_SIGNAL
from microagent.transport import DeadLetter, Deliver, DeliverReply, Delivery, SelectDeadLetter

__all__ = ['AMQPBroker', 'AMQPBusTransport', 'AMQPMeta', 'AMQPQueueTransport', 'AMQPSignalBus']

_R = TypeVar('_R')

ATTEMPT_HEADER = 'x-attempt'
REASON_HEADER = 'x-reason'
DEAD_AT_HEADER = 'x-dead-at'
#: names in a headers table that are this backend's or RabbitMQ's bookkeeping, not the envelope's
_OWN_HEADERS = frozenset((ATTEMPT_HEADER, REASON_HEADER, DEAD_AT_HEADER, 'x-delay', 'x-death', 'x-delivery-count',
                          'x-first-death-exchange', 'x-first-death-queue', 'x-first-death-reason',
                          'x-last-death-exchange', 'x-last-death-queue', 'x-last-death-reason'))
DEAD_SUFFIX = '.dead'
RETRY_SUFFIX = '.retry.'
RETRY_QUEUE_IDLE = 60.0  # a delay queue is deleted by RabbitMQ after its delay plus this, unused
CONTENT_TYPE = 'application/json'
PERSISTENT = 2
MAX_REASON = 4096
RETURN_WAIT = 5.0  # how long stopping a quorum queue's consumer waits for the queue to take back its messages
RETURN_POLL = 0.01
PING_PATIENCE = 2.0  # seconds a readiness ping may spend connecting
#: properties a retry, a dead letter or a requeue carries over (the headers table is rebuilt; an
#: ``expiration`` would race the delay queue's TTL)
_CARRIED = ('content_type', 'content_encoding', 'priority', 'correlation_id', 'reply_to', 'message_id',
            'timestamp', 'message_type', 'user_id', 'app_id', 'cluster_id')


def _table(properties: spec.Basic.Properties) -> dict[str, Any]:
    return dict(properties.headers or {})


def _fresh_table(properties: spec.Basic.Properties) -> dict[str, Any]:
    """The headers table without the ones this backend and RabbitMQ's dead-lettering add."""
    return {k: v for k, v in (properties.headers or {}).items() if k not in _OWN_HEADERS}


def _received_headers(properties: spec.Basic.Properties, message_id: bool = True) -> dict[str, str]:
    """The envelope's headers in a delivery: the table's text values but the bookkeeping, plus (with
    ``message_id``) that property as ``message-id`` where the table has none (a 1.x or foreign sender),
    so a queued 1.x message keeps one id across its retries."""
    table = properties.headers
    headers = {k: v for k, v in table.items() if type(v) is str and k not in _OWN_HEADERS} if table else {}
    if message_id and MESSAGE_ID not in headers and properties.message_id:
        headers[MESSAGE_ID] = properties.message_id
    return headers


def _properties(headers: Mapping[str, Any] | None = None) -> spec.Basic.Properties:
    """Persistent JSON with the envelope's headers as the table, its ids also as properties."""
    if not headers:
        return spec.Basic.Properties(content_type=CONTENT_TYPE, delivery_mode=PERSISTENT)
    return spec.Basic.Properties(content_type=CONTENT_TYPE, delivery_mode=PERSISTENT,
                                 headers=headers if type(headers) is dict else dict(headers),
                                 message_id=headers.get(MESSAGE_ID), correlation_id=headers.get(CORRELATION_ID))


def _carried(properties: spec.Basic.Properties, table: dict[str, Any]) -> spec.Basic.Properties:
    """The properties of a delivery, for moving it on (retry, dead letter, requeue) with ``table``."""
    values = {name: getattr(properties, name) for name in _CARRIED}
    return spec.Basic.Properties(delivery_mode=PERSISTENT, headers=table or None, **values)


@dataclass(eq=False)
class _Token:
    """Where a fetched message lives until it is settled (acked, retried, dead-lettered, released)."""

    channel: AbstractChannel
    tag: int
    properties: spec.Basic.Properties
    settled: bool = False
    drop: Callable[[str], Awaitable[None]] | None = None  # dead-letters the message with a reason


@dataclass(frozen=True)
class AMQPMeta:
    """The ``amqp`` keyword of a consumer (1.x ``MessageMeta``): the raw delivery. With the consumer
    option ``autoack=False`` the handler settles the message itself with ``ack``/``nack``/``reject``;
    a message refused without ``requeue`` goes to the dead letters, never nowhere."""

    queue: str
    channel: AbstractChannel
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    properties: spec.Basic.Properties
    _token: _Token = field(repr=False)

    @property
    def headers(self) -> dict[str, Any]:
        return _table(self.properties)

    async def ack(self) -> None:
        await _settle(self._token, 'ack')

    async def nack(self, requeue: bool = True) -> None:
        await self._refuse('nack', requeue)

    async def reject(self, requeue: bool = True) -> None:
        await self._refuse('reject', requeue)

    async def _refuse(self, how: str, requeue: bool) -> None:
        if requeue or self._token.drop is None or self._token.settled:
            await _settle(self._token, how, requeue)
        else:
            await self._token.drop(f'{how}ed by the handler')


async def _settle(token: _Token, how: str, requeue: bool = True) -> bool:
    """Settle a delivery once; False when its channel is gone (RabbitMQ redelivers the message)."""
    if token.settled:
        return True
    token.settled = True
    if token.channel.is_closed:
        return False
    if how == 'ack':
        await token.channel.basic_ack(token.tag)
    elif how == 'nack':
        await token.channel.basic_nack(token.tag, requeue=requeue)
    else:
        await token.channel.basic_reject(token.tag, requeue=requeue)
    return True


class _Subscription:
    """basic_consume into a local buffer that ``fetch`` drains; prefetch bounds the buffer."""

    def __init__(self) -> None:
        self.channel: AbstractChannel | None = None
        self.buffer: deque[DeliveredMessage] = deque()
        self.arrived = asyncio.Event()
        self.delivered = False  # whether RabbitMQ ever handed this subscription a message

    @property
    def live(self) -> bool:
        return self.channel is not None and not self.channel.is_closed

    async def on_message(self, channel: AbstractChannel, message: DeliveredMessage) -> None:
        if channel is self.channel:
            self.buffer.append(message)
            self.delivered = True
            self.arrived.set()

    def on_close(self, channel: AbstractChannel, closing: asyncio.Future[Any]) -> None:
        if not closing.cancelled():
            closing.exception()
        if channel is self.channel:
            self.buffer.clear()  # unacked on a dead channel: RabbitMQ redelivers them
            self.arrived.set()

    async def close(self) -> None:
        channel, self.channel = self.channel, None
        self.buffer.clear()
        if channel is not None and not channel.is_closed:
            await channel.close()  # unacked messages go back to the queue


class AMQPQueueTransport:
    """Durable RabbitMQ queues with publisher confirms, prefetch = the consumer's ``concurrency``,
    retries through delay queues and a dead-letter exchange and queue per queue."""

    #: the 1.x send keywords: AMQP ``properties``, and publishing through an ``exchange`` with a ``topic``
    send_options = frozenset(('properties', 'exchange', 'topic'))
    #: a cancelled fetch loses nothing: what it buffered stays unacked and returns when the channel closes
    fetch_cancel_safe = True
    unsettled_fate = 'it stays unacked; RabbitMQ delivers it again when its channel closes'

    def __init__(self, dsn: str | Sequence[str], log: logging.Logger | None = None, *,
                 reconnect_timeout: float = 60.0, name: str = '', queue_type: QueueType = 'classic',
                 delivery_limit: int | None = DEFAULT_DELIVERY_LIMIT) -> None:
        self.uid = uuid.uuid4().hex
        self.log = log or logging.getLogger('microagent.broker')
        self.reconnect_timeout = reconnect_timeout
        self.queue_type: QueueType = check_queue_type(queue_type, 'AMQP broker') or 'classic'
        self.delivery_limit = check_delivery_limit(delivery_limit, 'AMQP broker')
        self._arguments: dict[str, QueueArguments] = {}
        self._link = Link(dsn, self.log, name or f'microagent broker {self.uid[:8]}')
        self._publisher = Publisher(self._link, reconnect_timeout)
        self._control: AbstractChannel | None = None
        self._control_lock = asyncio.Lock()
        self._subs: dict[str, _Subscription] = {}
        self._prefetch: dict[str, int] = {}
        self._declared: set[str] = set()
        self._declared_generation = 0
        self._retry_queues: dict[str, float] = {}
        self.declared_queues: set[str] = set()  # every name declared by this transport, for teardown
        self.declared_exchanges: set[str] = set()

    def rename(self, name: str) -> None:
        """Name the connection as RabbitMQ shows it (the engine's id, so operators find it)."""
        self._link.name = name

    @property
    def dsn(self) -> str:
        """The DSN, several hosts joined in one string."""
        return self._link.dsn

    # channels

    async def _ctl(self, patience: float | None = None) -> AbstractChannel:
        """The control channel (declarations, counts). A channel error closes it; it is reopened."""
        if self._control is None or self._control.is_closed:
            self._control = await self._link.channel(self.reconnect_timeout if patience is None else patience)
        return self._control

    async def _on_control(self, work: Callable[[AbstractChannel], Awaitable[_R]], patience: float | None = None) -> _R:
        """Run ``work`` on the control channel, under its lock. When the connection breaks under it
        (closed by the server, a restart), run it again on a new connection, within ``patience``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.reconnect_timeout if patience is None else patience)
        async with self._control_lock:
            while True:
                ch = await self._ctl(max(deadline - loop.time(), 0.001))
                try:
                    return await work(ch)
                except LINK_ERRORS as exc:
                    if not ch.is_closed or loop.time() >= deadline:
                        raise
                    self.log.info('%s: the connection broke during a declaration or count (%s); doing it again',
                                  self._link.name, self._link.scrub(exc))

    def _fresh_connection(self) -> None:
        if self._declared_generation != self._link.generation:
            self._declared_generation = self._link.generation
            self._declared.clear()
            self._retry_queues.clear()

    # declarations

    async def declare(self, queue: Queue[Any]) -> None:
        await self._declare(queue, self.reconnect_timeout)

    async def _declare(self, queue: Queue[Any], patience: float) -> None:
        self._fresh_connection()
        if queue.name in self._declared:
            return
        await self._on_control(partial(self._declare_on, queue), patience)

    def arguments(self, queue: Queue[Any], version: tuple[int, ...] = (0,)) -> QueueArguments:
        """How ``queue`` is declared: its own type and limit, else this broker's defaults."""
        queue_type = queue.queue_type or self.queue_type
        limit = queue.delivery_limit if queue.delivery_limit is not None else self.delivery_limit
        if queue_type == 'classic' and queue.delivery_limit is not None:
            raise DeclarationError(f'queue {queue.name!r}: delivery_limit needs a quorum queue (queue_type=\'quorum\')')
        return QueueArguments(queue_type, limit, version)

    async def _declare_on(self, queue: Queue[Any], ch: AbstractChannel) -> None:
        """Declare the queue, its dead letters and its exchange binding (the control lock is held)."""
        self._fresh_connection()
        if queue.name in self._declared:
            return
        name, dead = queue.name, queue.name + DEAD_SUFFIX
        args = self.arguments(queue, server_version(ch.connection.server_properties))
        await self._queue_declare(ch, name, args, args.main(dead))
        await ch.exchange_declare(dead, exchange_type='fanout', durable=True)
        await self._queue_declare(ch, dead, args, args.dead())
        await ch.queue_bind(dead, dead)
        self._arguments[name] = args
        self.declared_queues.update((name, dead))
        self.declared_exchanges.add(dead)
        exchange = queue.exchange_declaration
        if exchange is not None:
            await self._declare_exchange(ch, exchange, f'queue {name!r}: ')
            keys = (queue.topics or ('#',)) if exchange.type == 'topic' else ('',)
            for key in keys:
                await ch.queue_bind(name, exchange.name, routing_key=key)
        self._declared.add(name)

    async def _queue_declare(self, ch: AbstractChannel, name: str, wanted: QueueArguments,
                             arguments: FieldTable | None) -> None:
        try:
            await ch.queue_declare(name, durable=True, arguments=arguments)
        except aiormq.ChannelPreconditionFailed as exc:
            existing = existing_type(exc) or await self._existing_type(name)
            raise declaration_error(name, wanted, exc, existing) from None

    async def _existing_type(self, name: str) -> str | None:
        """The type of an existing queue that refused a declaration: RabbitMQ names the first
        argument that differs, often not the type. An argument-less declaration tells: a classic
        queue without arguments takes it (a no-op), any other names its type or another argument."""
        channel = await self._link.channel(self.reconnect_timeout)
        try:
            await channel.queue_declare(name, durable=True)
        except aiormq.ChannelPreconditionFailed as exc:
            return existing_type(exc)
        finally:
            if not channel.is_closed:
                await channel.close()
        return 'classic'

    async def _declare_exchange(self, ch: AbstractChannel, exchange: Exchange, where: str) -> None:
        """Declare the exchange with its declared type, never one guessed from other queues."""
        try:
            await ch.exchange_declare(exchange.name, exchange_type=exchange.type, durable=True)
        except aiormq.ChannelPreconditionFailed as exc:
            raise DeclarationError(f'{where}exchange {exchange.name!r} exists on RabbitMQ with another type or '
                                   f'options than a durable {exchange.type} exchange: {exc}') from None
        self.declared_exchanges.add(exchange.name)

    async def _retry_queue(self, queue: Queue[Any], delay: float) -> str:
        name = queue.name
        ms = max(int(delay * 1000), 1)
        retry = f'{name}{RETRY_SUFFIX}{ms}'
        now = time.monotonic()
        self._fresh_connection()
        if now - self._retry_queues.get(retry, -RETRY_QUEUE_IDLE) < RETRY_QUEUE_IDLE / 2:
            return retry  # declared recently: its expiry lease is still long enough
        args = self._arguments.get(name) or self.arguments(queue)
        arguments = args.retry(name, ms, ms + int(RETRY_QUEUE_IDLE * 1000))
        await self._on_control(lambda ch: self._queue_declare(ch, retry, args, arguments))
        self._retry_queues[retry] = now
        self.declared_queues.add(retry)
        return retry

    # sending

    async def put(self, queue: Queue[Any], envelopes: Sequence[Envelope], *, delay: float = 0.0,
                  **options: Any) -> None:
        """Publish to the queue through the default exchange, a delay through a TTL queue that
        dead-letters into it. The 1.x keywords: ``properties`` (AMQP basic properties), ``exchange``
        and ``topic`` (publish through the exchange, the queue's own one by default, with the topic
        or the queue name as routing key)."""
        await self.declare(queue)
        exchange: str | None = options.get('exchange')
        topic: str | None = options.get('topic')
        if topic is not None and exchange is None:
            exchange = queue.exchange
            if exchange is None:
                raise UsageError(f'queue {queue.name!r}: topic {topic!r} needs an exchange; the queue has none')
        if exchange is not None and delay > 0:
            raise UsageError(f'queue {queue.name!r}: a delayed send goes to the queue, not through exchange '
                             f'{exchange!r}')
        given = options.get('properties')
        outgoing = [Outgoing('', queue.name, body, _user_properties(queue, headers, given) if given
                             else _properties(headers), mandatory=True) for body, headers in envelopes]
        if exchange is not None:
            await self._through(queue, exchange, topic or queue.name, outgoing)
        elif delay > 0:
            retry = await self._retry_queue(queue, delay)
            await self._publisher.publish([_to(out, '', retry) for out in outgoing], f'queue {retry!r}')
        else:
            await self._to_queue(queue, outgoing)

    async def _to_queue(self, queue: Queue[Any], outgoing: list[Outgoing]) -> None:
        try:
            await self._publisher.publish(outgoing, f'queue {queue.name!r}')
        except aiormq.PublishError:
            # returned as unroutable: the queue was deleted behind our back; declare it and send again
            self.log.warning('Queue %s was missing on RabbitMQ; declared it again', queue.name)
            self._declared.discard(queue.name)
            await self.declare(queue)
            await self._publisher.publish(outgoing, f'queue {queue.name!r}')

    async def _through(self, queue: Queue[Any], exchange: str, key: str, outgoing: list[Outgoing]) -> None:
        try:
            await self._publisher.publish([_to(out, exchange, key) for out in outgoing], f'exchange {exchange!r}')
        except aiormq.PublishError:
            raise QueueNotFound(f'queue {queue.name!r}: exchange {exchange!r} routed the message to no queue '
                                f'(routing key {key!r})') from None
        except aiormq.ChannelNotFoundEntity:
            raise QueueNotFound(f'queue {queue.name!r}: no exchange {exchange!r} on RabbitMQ') from None

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> int:
        """RabbitMQ routes by its own bindings; an exchange declared in this process is declared on
        RabbitMQ first. Returns 1 once RabbitMQ has routed the message to at least one queue (it does
        not say how many); no bound queue, or no exchange at all, is a LookupError."""
        declared = Exchange.get_all().get(exchange)
        if declared is not None and declared.name not in self.declared_exchanges:
            await self._on_control(partial(self._declare_exchange, exchange=declared, where=''))
        out = Outgoing(exchange, routing_key, envelope.body, _properties(envelope.headers), mandatory=True)
        try:
            await self._publisher.publish([out], f'exchange {exchange!r}')
        except aiormq.PublishError:
            raise QueueNotFound(f'No queue is bound to exchange {exchange!r} for key {routing_key!r}') from None
        except aiormq.ChannelNotFoundEntity:
            raise QueueNotFound(f'No exchange {exchange!r} on RabbitMQ') from None
        return 1

    # consuming

    async def consume(self, queue: Queue[Any], concurrency: int) -> None:
        """A consumer running ``concurrency`` handlers will fetch: RabbitMQ hands it that many at once."""
        self._prefetch[queue.name] = concurrency

    async def stop_consuming(self, queue: Queue[Any]) -> None:
        """The consumer stopped: what RabbitMQ pushed and it never fetched goes back to the queue now.

        A quorum queue takes back a closed channel's unacknowledged messages (and the nacks before
        it) through its Raft log, after the close is confirmed: its counts show them only once that
        is applied, which is when the queue drops the channel's consumer. So with a quorum queue,
        this returns once the queue's consumer count has dropped (bounded by ``RETURN_WAIT``)."""
        self._prefetch.pop(queue.name, None)
        sub = self._subs.pop(queue.name, None)
        if sub is None:
            return
        args = self._arguments.get(queue.name)
        if args is None or not args.quorum or not sub.live or not sub.delivered:
            await sub.close()
            return
        before = await self._consumers(queue.name)
        await sub.close()

        async def dropped() -> bool:  # ours is gone
            return await self._consumers(queue.name) < before

        if not await _until(dropped):
            self.log.info('Queue %s: the quorum queue still counts %d consumer(s) after %.0fs; '
                          'not waiting any longer for it to take back the unacknowledged messages',
                          queue.name, before, RETURN_WAIT)

    async def _consumers(self, name: str) -> int:
        async def count(ch: AbstractChannel) -> int:
            return int((await ch.queue_declare(name, passive=True)).consumer_count or 0)
        return await self._on_control(count)

    async def _subscribe(self, queue: Queue[Any], count: int, patience: float) -> _Subscription:
        sub = self._subs.setdefault(queue.name, _Subscription())
        if sub.live:
            return sub
        again = sub.channel is not None
        await sub.close()
        prefetch = self._prefetch.get(queue.name) or max(count, 1)
        await self._declare(queue, patience)
        channel = await self._link.channel(patience)
        try:
            await channel.basic_qos(prefetch_count=prefetch)
            sub.channel = channel
            channel.closing.add_done_callback(partial(sub.on_close, channel))
            await channel.basic_consume(queue.name, partial(sub.on_message, channel))
        except BaseException:
            sub.channel = None
            await channel.close()
            raise
        if again:
            self.log.info('Queue %s: consuming again', queue.name)
        return sub

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery[_Token]]:
        sub = await self._subscribe(queue, count, timeout)
        if not sub.buffer:
            sub.arrived.clear()
            try:
                async with asyncio.timeout(timeout):
                    await sub.arrived.wait()
            except TimeoutError:
                return []
        taken = [sub.buffer.popleft() for _ in range(min(count, len(sub.buffer)))]
        channel = sub.channel
        if channel is None:
            return []
        return [self._delivery(queue, channel, message) for message in taken]

    def _delivery(self, queue: Queue[Any], channel: AbstractChannel, message: DeliveredMessage) -> Delivery[_Token]:
        properties = message.header.properties
        redelivered = bool(getattr(message.delivery, 'redelivered', False))
        tag = message.delivery_tag or 0
        token = _Token(channel, tag, properties)
        attempt = 1
        table = properties.headers
        if table and ATTEMPT_HEADER in table:
            try:
                attempt = max(int(table[ATTEMPT_HEADER]), 1)  # type: ignore[arg-type]  # a bad type: TypeError
            except (TypeError, ValueError):
                attempt = 1
        headers = _received_headers(properties)
        if CORRELATION_ID not in headers and properties.correlation_id:
            headers[CORRELATION_ID] = properties.correlation_id
        meta = AMQPMeta(queue.name, channel, tag, redelivered, message.exchange or '', message.routing_key or '',
                        properties, token)
        delivery = Delivery(Envelope(message.body, headers or None), token, attempt, redelivered, {'amqp': meta})
        token.drop = partial(self._drop, queue, delivery)
        return delivery

    async def _drop(self, queue: Queue[Any], delivery: Delivery[_Token], reason: str) -> None:
        """Dead-letter on the handler's ``reject``/``nack``; if that fails, the message goes back now."""
        async with self._or_give_back(delivery.token):
            await self.dead_letter(queue, delivery, reason)

    async def ack(self, queue: Queue[Any], delivery: Delivery[_Token]) -> None:
        if not await _settle(delivery.token, 'ack'):
            self.log.info('Queue %s: the channel of a handled message is gone; RabbitMQ will deliver it again',
                          queue.name)

    async def retry(self, queue: Queue[Any], delivery: Delivery[_Token], delay: float, reason: str) -> None:
        token = delivery.token
        if token.settled:
            return  # settled by the handler (autoack=False): not ours to retry
        table = {**_fresh_table(token.properties), ATTEMPT_HEADER: delivery.attempt + 1,
                 REASON_HEADER: reason[:MAX_REASON]}
        # a failure leaves the message unacked: the engine tries again, then releases it
        retry = await self._retry_queue(queue, delay)
        await self._publisher.publish([Outgoing('', retry, delivery.envelope.body, _carried(token.properties, table))],
                                      f'queue {retry!r}')
        await self.ack(queue, delivery)

    async def dead_letter(self, queue: Queue[Any], delivery: Delivery[_Token], reason: str) -> None:
        token = delivery.token
        if token.settled:
            return
        table = {**_fresh_table(token.properties), ATTEMPT_HEADER: delivery.attempt,
                 REASON_HEADER: reason[:MAX_REASON], DEAD_AT_HEADER: time.time()}
        dead = queue.name + DEAD_SUFFIX
        await self.declare(queue)  # a failure leaves the message unacked: the engine tries again
        await self._publisher.publish([Outgoing(dead, '', delivery.envelope.body, _carried(token.properties, table))],
                                      f'exchange {dead!r}')
        await self.ack(queue, delivery)

    @asynccontextmanager
    async def _or_give_back(self, token: _Token) -> AsyncIterator[None]:
        """When moving a message fails, return it to its queue now rather than hold it unacked."""
        try:
            yield
        except Exception:
            with suppress(Exception):
                await _settle(token, 'nack', requeue=True)
            raise

    async def release(self, queue: Queue[Any], deliveries: Sequence[Delivery[_Token]]) -> None:
        for delivery in deliveries:
            await _settle(delivery.token, 'nack', requeue=True)

    # inspecting

    async def _count(self, name: str) -> int:
        async def count(ch: AbstractChannel) -> int:
            try:
                result = await ch.queue_declare(name, passive=True)
            except aiormq.ChannelNotFoundEntity:
                return 0
            return int(result.message_count or 0)
        return await self._on_control(count)

    async def length(self, name: str) -> int:
        return await self._count(name)

    async def dead_letter_count(self, name: str) -> int:
        return await self._count(name + DEAD_SUFFIX)

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        before = await self.dead_letter_count(name)
        channel = await self._link.channel(self.reconnect_timeout)
        letters: list[DeadLetter] = []
        try:
            last = 0
            for _ in range(limit):
                try:
                    message = await channel.basic_get(name + DEAD_SUFFIX)
                except aiormq.ChannelNotFoundEntity:
                    return []
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                last = message.delivery_tag or last
                letters.append(_dead_letter(name, message))
            if last:
                await channel.basic_nack(last, multiple=True, requeue=True)  # only looked at
        finally:
            if not channel.is_closed:
                await channel.close()
        if letters:
            await self._back(name + DEAD_SUFFIX, before)
        return letters

    async def _back(self, name: str, count: int) -> None:
        """Wait until ``name`` counts ``count`` messages again, after returning what was taken: a
        quorum queue applies returns through its Raft log, after the nack (bounded by RETURN_WAIT)."""
        async def back() -> bool:
            return await self._count(name) >= count

        await _until(back)

    async def requeue_dead_letters(self, name: str) -> int:
        total = await self.dead_letter_count(name)
        moved = 0
        channel = await self._link.channel(self.reconnect_timeout)
        try:
            while moved < total:
                batch: list[DeliveredMessage] = []
                while moved + len(batch) < total and len(batch) < 100:
                    message = await channel.basic_get(name + DEAD_SUFFIX)
                    if not isinstance(message.delivery, spec.Basic.GetOk):
                        break
                    batch.append(message)
                if not batch:
                    break
                await self._publisher.publish(
                    [Outgoing('', name, m.body, _carried(m.header.properties, _fresh_table(m.header.properties)))
                     for m in batch], f'queue {name!r}')
                await channel.basic_ack(batch[-1].delivery_tag or 0, multiple=True)
                moved += len(batch)
        finally:
            if not channel.is_closed:
                await channel.close()
        return moved

    async def remove_dead_letters(self, name: str, select: SelectDeadLetter, *, requeue: bool) -> int:
        """Get every dead letter (the count when asked), publish the picked ones back when
        ``requeue``, ack them, and return the others to the dead-letter queue in their order."""
        total = await self.dead_letter_count(name)
        channel = await self._link.channel(self.reconnect_timeout)
        try:
            taken: list[DeliveredMessage] = []
            last = got = 0
            for position in range(total):
                message = await channel.basic_get(name + DEAD_SUFFIX)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                last, got = message.delivery_tag or last, got + 1
                if select(position, _dead_letter(name, message)):
                    taken.append(message)
            if requeue and taken:
                await self._publisher.publish(
                    [Outgoing('', name, m.body, _carried(m.header.properties, _fresh_table(m.header.properties)))
                     for m in taken], f'queue {name!r}')
            for message in taken:
                await channel.basic_ack(message.delivery_tag or 0)
            if last and len(taken) < got:  # the others, unacked, go back in their order
                await channel.basic_nack(last, multiple=True, requeue=True)
        finally:
            if not channel.is_closed:
                await channel.close()
        if len(taken) < got:
            await self._back(name + DEAD_SUFFIX, total - len(taken))
        return len(taken)

    async def exists(self, name: str) -> bool:
        """Declared on the server: the queue or its dead-letter queue."""
        async def declared(ch: AbstractChannel, queue: str) -> bool:
            try:
                await ch.queue_declare(queue, passive=True)
            except aiormq.ChannelNotFoundEntity:
                return False
            return True
        return (await self._on_control(partial(declared, queue=name))
                or await self._on_control(partial(declared, queue=name + DEAD_SUFFIX)))

    async def ping(self) -> None:
        """A passive declaration of ``amq.direct`` (which every RabbitMQ has) on the control channel:
        one round trip, connecting first if needed (within ``PING_PATIENCE``)."""
        await self._on_control(_passive_declare, patience=PING_PATIENCE)

    async def close(self) -> None:
        for sub in self._subs.values():
            await sub.close()
        self._subs.clear()
        await self._publisher.close()
        await self._link.close()


async def _until(done: Callable[[], Awaitable[bool]]) -> bool:
    """Poll the server until ``done`` (for at most RETURN_WAIT): whether it came true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RETURN_WAIT
    while not await done():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(RETURN_POLL)
    return True


async def _passive_declare(channel: AbstractChannel) -> None:
    await channel.exchange_declare('amq.direct', passive=True)


def _to(out: Outgoing, exchange: str, key: str) -> Outgoing:
    return Outgoing(exchange, key, out.body, out.properties, out.mandatory)


_PROPERTY_NAMES = frozenset(('content_type', 'content_encoding', 'headers', 'delivery_mode', 'priority',
                             'correlation_id', 'reply_to', 'expiration', 'message_id', 'timestamp',
                             'message_type', 'user_id', 'app_id', 'cluster_id'))


def _user_properties(queue: Queue[Any], headers: Mapping[str, str] | None,
                     given: Mapping[str, Any]) -> spec.Basic.Properties:
    """Our defaults (JSON, persistent, the envelope's headers and ids) overridden by the 1.x
    ``properties`` send keyword, as given: its ``headers`` are the table. aioamqp's ``type`` is
    pamqp's ``message_type``. An unknown property is a TypeError, not a dropped one."""
    values = {('message_type' if key == 'type' else key): value for key, value in given.items()}
    unknown = sorted(set(values) - _PROPERTY_NAMES)
    if unknown:
        raise UsageError(f'queue {queue.name!r}: unknown AMQP properties {", ".join(map(repr, unknown))}')
    defaults: dict[str, Any] = {'content_type': CONTENT_TYPE, 'delivery_mode': PERSISTENT}
    if headers:
        defaults.update(headers=dict(headers), message_id=headers.get(MESSAGE_ID),
                        correlation_id=headers.get(CORRELATION_ID))
    return spec.Basic.Properties(**{**defaults, **values})


def _dead_letter(name: str, message: DeliveredMessage) -> DeadLetter:
    properties = message.header.properties
    table = _table(properties)
    reason = table.get(REASON_HEADER, '')
    if isinstance(reason, bytes):
        reason = reason.decode('utf-8', 'replace')
    try:
        attempts = int(table.get(ATTEMPT_HEADER, 1))
        died = float(table.get(DEAD_AT_HEADER, 0.0))
    except (TypeError, ValueError):
        attempts, died = 1, 0.0
    if DEAD_AT_HEADER not in table:  # dead-lettered by RabbitMQ itself (a quorum queue's delivery limit)
        reason, died = _server_death(table) or (reason, died)
    headers = _received_headers(properties)
    return DeadLetter(name, Envelope(message.body, headers or None), str(reason), attempts, died)


def _server_death(table: Mapping[str, Any]) -> tuple[str, float] | None:
    """(reason, time) of RabbitMQ's own dead-lettering, from its ``x-death`` header."""
    deaths = table.get('x-death')
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return None
    death = deaths[0]
    why = death.get('reason')
    why = why.decode('utf-8', 'replace') if isinstance(why, bytes) else str(why or '')
    when = death.get('time')
    died = when.timestamp() if isinstance(when, datetime) else 0.0
    if why == 'delivery_limit':
        return ('returned unacknowledged more often than the delivery limit of the quorum queue (a consumer '
                'crashed or lost its connection while holding it)', died)
    return (f'dead-lettered by RabbitMQ: {why}', died)


def _shown(text: str, limit: int = 200) -> str:
    """A routing key or label from the wire, safe for a log line (no control characters, bounded)."""
    return text if text.isprintable() and len(text) <= limit else repr(text[:limit])


class AMQPBusTransport:
    """Signals over the topic exchange named by the prefix, read through one exclusive queue per bus."""

    #: messages RabbitMQ hands the bus unacknowledged: aiormq runs a task per delivery, and the bus
    #: acknowledges one only once the engine's backlog has room for it, so this bounds those tasks
    prefetch = 256

    def __init__(self, dsn: str | Sequence[str], prefix: str = 'PUBSUB', log: logging.Logger | None = None, *,
                 reconnect_timeout: float = 60.0, name: str = '') -> None:
        self.uid = uuid.uuid4().hex
        self.prefix = prefix
        self.log = log or logging.getLogger('microagent.bus')
        self.reconnect_timeout = reconnect_timeout
        self._link = Link(dsn, self.log, name or f'microagent bus {prefix} {self.uid[:8]}')
        self._publisher = Publisher(self._link, reconnect_timeout, self._declare_exchange)
        self.queue_name = f'{prefix}.bus.{self.uid}'
        self._names: set[str] = set()
        self._keys: list[str] = []
        self._deliver: Deliver | None = None
        self._deliver_reply: DeliverReply | None = None
        self._channel: AbstractChannel | None = None
        self._ready = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    def rename(self, name: str) -> None:
        """Name the connection as RabbitMQ shows it (the engine's id, so operators find it)."""
        self._link.name = name

    @property
    def dsn(self) -> str:
        """The DSN, several hosts joined in one string."""
        return self._link.dsn

    @property
    def reply_to(self) -> str:
        return self.queue_name

    async def _declare_exchange(self, channel: AbstractChannel) -> None:
        await channel.exchange_declare(self.prefix, exchange_type='topic', durable=True)

    # publishing

    async def publish(self, name: str, sender: str, envelope: Envelope) -> None:
        """To the prefix exchange, key ``{name}.{sender}``; a request also names the caller's queue and
        the request id in ``reply_to`` and ``correlation_id``, where 1.x peers read them."""
        headers = envelope.headers
        if headers:
            props = spec.Basic.Properties(content_type=CONTENT_TYPE, message_type=name,
                                          headers=headers if type(headers) is dict else dict(headers),
                                          message_id=headers.get(MESSAGE_ID),
                                          correlation_id=headers.get(REQUEST_ID), reply_to=headers.get(REPLY_TO))
        else:
            props = spec.Basic.Properties(content_type=CONTENT_TYPE, message_type=name)
        await self._publisher.publish([Outgoing(self.prefix, f'{name}.{sender}', envelope.body, props)],
                                      f'signal {name!r}')

    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        """Straight to the caller's queue through the default exchange, as 1.x peers answer."""
        headers = envelope.headers or {}
        props = spec.Basic.Properties(content_type=CONTENT_TYPE, message_type=RESPONSE_SIGNAL,
                                      correlation_id=headers.get(REQUEST_ID), message_id=headers.get(MESSAGE_ID),
                                      headers=dict(headers) or None)
        await self._publisher.publish([Outgoing('', reply_to, envelope.body, props)], f'answer to {reply_to!r}')

    # receiving

    async def subscribe(self, names: Collection[str], deliver: Deliver) -> None:
        self._deliver = deliver
        fresh = [name for name in names if name not in self._names]
        self._names.update(fresh)
        keys = [f'{name}.#' for name in fresh]
        self._keys += keys
        channel = await self._listening()
        for key in keys:
            try:
                await channel.queue_bind(self.queue_name, self.prefix, routing_key=key)
            except LINK_ERRORS:
                if not channel.is_closed:
                    raise  # else: the watcher binds every key again on reconnection

    async def receive_replies(self, deliver: DeliverReply) -> None:
        self._deliver_reply = deliver
        await self._listening()

    async def _listening(self) -> AbstractChannel:
        """The channel consuming the bus queue, once the watcher has set it up."""
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._keep_subscribed(), name=f'amqp-bus:{self.prefix}')
        try:
            async with asyncio.timeout(self.reconnect_timeout):
                while True:
                    await self._ready.wait()
                    channel = self._channel
                    if channel is not None:
                        return channel
        except TimeoutError:
            raise ConnectionFailed(f'{self._link.name}: could not subscribe on RabbitMQ at '
                                   f'{self._link.safe_dsn} in {self.reconnect_timeout}s') from None

    async def _keep_subscribed(self) -> None:
        """Declare the bus queue, bind every key and consume; again after each break, with backoff."""
        retrier = Retrier(self.log, f'{self._link.name}: subscribing', base=0.2)
        subscribed = False
        while True:
            try:
                channel = await self._subscribed_channel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await retrier.failed(exc)
                continue
            retrier.succeeded()
            if subscribed:
                self.log.info('%s: subscribed again to %d signal(s)', self._link.name, len(self._keys))
            subscribed = True
            self._channel = channel
            self._ready.set()
            try:
                await channel.closing
            except Exception as exc:  # the reason the channel closed
                self.log.warning('%s: subscription broken (%s); subscribing again', self._link.name,
                                 self._link.scrub(exc))
            self._ready.clear()
            self._channel = None

    async def _subscribed_channel(self) -> AbstractChannel:
        channel = await self._link.channel()
        try:
            await self._declare_exchange(channel)
            await channel.queue_declare(self.queue_name, exclusive=True, auto_delete=True)
            for key in list(self._keys):
                await channel.queue_bind(self.queue_name, self.prefix, routing_key=key)
            await channel.basic_qos(prefetch_count=self.prefetch)
            await channel.basic_consume(self.queue_name, self._on_message)
        except BaseException:
            if not channel.is_closed:
                with suppress(Exception):  # the loop must go on whatever closing says
                    await channel.close()
            raise
        return channel

    async def _on_message(self, message: DeliveredMessage) -> None:
        """Hand a delivery to the engine; acknowledge it once the backlog has room (backpressure)."""
        try:
            if not message.exchange:  # the default exchange: an answer sent straight to this bus's queue
                answer = self._answer(message)
                if answer is not None and self._deliver_reply is not None:
                    await self._deliver_reply(answer)
            else:
                signal = self._signal(message)
                if signal is not None and self._deliver is not None:
                    await self._deliver(*signal)
        except Exception as exc:  # the engine never raises; this guards the mapping above
            self.log.warning('%s: dropped a message routed %s: %s: %s', self._link.name,
                             _shown(message.routing_key or ''), type(exc).__name__, exc)
        finally:
            with suppress(Exception):  # a closed channel: RabbitMQ forgets it with the exclusive queue
                await message.channel.basic_ack(message.delivery_tag or 0)

    def _answer(self, message: DeliveredMessage) -> Envelope | None:
        """An RPC answer; a 1.x peer names its request only in ``correlation_id``."""
        props = message.header.properties
        headers = _received_headers(props)
        if REQUEST_ID not in headers and props.correlation_id:
            headers[REQUEST_ID] = props.correlation_id
        if props.message_type != RESPONSE_SIGNAL or REQUEST_ID not in headers:
            self._dropped(message.routing_key or '', props.message_type, 'not an RPC answer')
            return None
        return Envelope(message.body, headers)

    def _signal(self, message: DeliveredMessage) -> tuple[str, str, Envelope] | None:
        """(name, sender, envelope) of a signal. The routing key is the truth: a ``message_type``
        label naming another signal drops the message (with a warning), it never reroutes it."""
        props = message.header.properties
        key, label = message.routing_key or '', props.message_type
        name = label or self._name_in(key)
        if not key.startswith(name + '.'):
            self._dropped(key, label, f'its routing key is not of signal {name!r}')
            return None
        if name == RESPONSE_SIGNAL:
            self._dropped(key, label, 'not a signal of this bus')
            return None
        # no message-id from the property: the engine tells a 1.x request (no error answers) by its absence
        headers = _received_headers(props, message_id=False)
        if props.reply_to and props.correlation_id:  # a request, maybe from a 1.x peer without the headers
            headers.setdefault(REQUEST_ID, props.correlation_id)
            headers.setdefault(REPLY_TO, props.reply_to)
        return name, key[len(name) + 1:], Envelope(message.body, headers or None)

    def _name_in(self, key: str) -> str:
        """The signal of an unlabelled routing key ``{name}.{sender}``: the longest subscribed name
        it starts with (names may hold dots), else its first word."""
        names = [name for name in self._names if key.startswith(name + '.')]
        return max(names, key=len) if names else key.partition('.')[0]

    def _dropped(self, key: str, label: str | None, why: str) -> None:
        self.log.warning('%s: dropped a message routed %s labelled %s: %s', self._link.name, _shown(key),
                         _shown(label or ''), why)

    async def ping(self) -> None:
        """A passive declaration of ``amq.direct`` on the publishing channel; and, once something is
        subscribed, the bus queue must be consumed now (not resubscribing)."""
        channel = await self._publisher.channel(PING_PATIENCE)
        await _passive_declare(channel)
        if self._watcher is not None and self._channel is None:
            raise ConnectionFailed(f'{self._link.name}: not subscribed (reconnecting to RabbitMQ at '
                                   f'{self._link.safe_dsn})')

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        self._ready.clear()
        await self._publisher.close()
        await self._link.close()


class AMQPBroker(AbstractQueueBroker):
    """The queue broker on RabbitMQ: the engine over an ``AMQPQueueTransport`` (1.x constructor)."""

    transport: AMQPQueueTransport

    def __init__(self, dsn: str | Sequence[str], log: logging.Logger | None = None, *,
                 reconnect_timeout: float = 60.0, queue_type: QueueType = 'classic',
                 delivery_limit: int | None = DEFAULT_DELIVERY_LIMIT, **options: Any) -> None:
        """``dsn``: one server, or a cluster's nodes (``amqp://u:p@h1,h2:5673/vhost`` or a list);
        ``queue_type``: of the queues whose declaration does not say; ``delivery_limit``: of those
        that are quorum (see ``Queue``)."""
        transport = AMQPQueueTransport(dsn, log, reconnect_timeout=reconnect_timeout, queue_type=queue_type,
                                       delivery_limit=delivery_limit)
        super().__init__(transport, dsn=transport.dsn, log=log, **options)
        self.reconnect_timeout = reconnect_timeout
        transport.rename(f'microagent broker {self.uid[:8]}')


class AMQPSignalBus(AbstractSignalBus):
    """The signal bus on RabbitMQ: the engine over an ``AMQPBusTransport`` (1.x constructor)."""

    transport: AMQPBusTransport

    def __init__(self, dsn: str | Sequence[str], prefix: str = 'PUBSUB', log: logging.Logger | None = None, *,
                 reconnect_timeout: float = 60.0, **options: Any) -> None:
        transport = AMQPBusTransport(dsn, prefix, log, reconnect_timeout=reconnect_timeout)
        super().__init__(transport, dsn=transport.dsn, prefix=prefix, log=log, **options)
        self.reconnect_timeout = reconnect_timeout
        transport.rename(f'microagent bus {prefix} {self.uid[:8]}')
