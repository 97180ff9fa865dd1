"""RabbitMQ backend on aiormq: ``AMQPSignalBus`` (a topic exchange) and ``AMQPBroker`` (durable queues).

Layout on the server, for a queue ``mailer``:

* ``mailer``: a durable queue, fed through the default exchange; bound to the queue's ``exchange``
  with the type that exchange is declared with (``Exchange``, or implied by the queue's form);
* ``mailer.retry.{ms}``: delay queues (queue TTL, dead-lettered back to ``mailer``) that hold a
  failed message until its retry is due, or a message sent with ``delay``; they expire when unused;
* ``mailer.dead``: a fanout exchange and a durable queue holding dead letters, with the reason,
  the attempt count and the time in headers.

The attempt count travels in the ``x-attempt`` header. Signals go to the topic exchange named by the
bus prefix with routing key ``{name}.{sender}``; each bus reads one exclusive auto-delete queue, and
RPC answers go straight to the caller's queue (``reply_to``) with the request id as correlation id.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import aiormq
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec
from pamqp.common import FieldTable

from ..broker import AbstractQueueBroker, DeadLetter, Delivery, backoff
from ..bus import RESPONSE_SIGNAL, AbstractSignalBus, shown
from ..errors import ConnectionFailed, DeclarationError, InvalidArgument, QueueNotFound, UsageError
from ..exchange import Exchange
from ..queue import Queue
from .amqp_link import LINK_ERRORS, Link, Outgoing, Publisher

if TYPE_CHECKING:
    from ..agent import Consumer

__all__ = ['AMQPBroker', 'AMQPMeta', 'AMQPSignalBus']

ATTEMPT_HEADER = 'x-attempt'
REASON_HEADER = 'x-reason'
DEAD_AT_HEADER = 'x-dead-at'
_OWN_HEADERS = (ATTEMPT_HEADER, REASON_HEADER, DEAD_AT_HEADER, 'x-death', 'x-first-death-exchange',
                'x-first-death-queue', 'x-first-death-reason', 'x-last-death-exchange', 'x-last-death-queue',
                'x-last-death-reason')
DEAD_SUFFIX = '.dead'
RETRY_SUFFIX = '.retry.'
RETRY_QUEUE_IDLE = 60.0  # a delay queue is deleted by RabbitMQ after its delay plus this, unused
CONTENT_TYPE = 'application/json'
PERSISTENT = 2
MAX_REASON = 4096


def _headers(properties: spec.Basic.Properties) -> dict[str, Any]:
    return dict(properties.headers or {})


def _fresh_headers(properties: spec.Basic.Properties) -> dict[str, Any]:
    """The user's headers, without the ones this backend and RabbitMQ's dead-lettering add."""
    return {k: v for k, v in _headers(properties).items() if k not in _OWN_HEADERS}


def _properties(headers: FieldTable | None = None) -> spec.Basic.Properties:
    return spec.Basic.Properties(content_type=CONTENT_TYPE, delivery_mode=PERSISTENT, headers=headers or None)


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
        return _headers(self.properties)

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

    @property
    def live(self) -> bool:
        return self.channel is not None and not self.channel.is_closed

    async def on_message(self, channel: AbstractChannel, message: DeliveredMessage) -> None:
        if channel is self.channel:
            self.buffer.append(message)
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


class AMQPBroker(AbstractQueueBroker):
    """Durable RabbitMQ queues with publisher confirms, prefetch = the consumer's ``concurrency``,
    retries through delay queues and a dead-letter exchange and queue per queue."""

    send_options = frozenset(('properties', 'exchange', 'topic'))

    #: a cancelled fetch loses nothing: what it buffered stays unacked and returns when the channel closes
    fetch_cancel_safe = True
    unsettled_fate = 'it stays unacked; RabbitMQ delivers it again when its channel closes'

    def __init__(self, dsn: str, log: logging.Logger | None = None, *, reconnect_timeout: float = 60.0,
                 **options: Any) -> None:
        super().__init__(dsn, log, **options)
        self.reconnect_timeout = reconnect_timeout
        self._link = Link(dsn, self.log, f'microagent broker {self.uid[:8]}')
        self._publisher = Publisher(self._link, reconnect_timeout)
        self._control: AbstractChannel | None = None
        self._control_lock = asyncio.Lock()
        self._subs: dict[str, _Subscription] = {}
        self._declared: set[str] = set()
        self._declared_generation = 0
        self._retry_queues: dict[str, float] = {}
        self.declared_queues: set[str] = set()  # every name declared by this broker, for teardown
        self.declared_exchanges: set[str] = set()

    # channels

    async def _ctl(self, patience: float | None = None) -> AbstractChannel:
        """The control channel (declarations, counts). A channel error closes it; it is reopened."""
        if self._control is None or self._control.is_closed:
            self._control = await self._link.channel(self.reconnect_timeout if patience is None else patience)
        return self._control

    def _fresh_connection(self) -> None:
        if self._declared_generation != self._link.generation:
            self._declared_generation = self._link.generation
            self._declared.clear()
            self._retry_queues.clear()

    # declarations

    async def declare_queue(self, queue: Queue[Any]) -> None:
        await self._declare(queue, self.reconnect_timeout)

    async def _declare(self, queue: Queue[Any], patience: float) -> None:
        self._fresh_connection()
        if queue.name in self._declared:
            return
        async with self._control_lock:
            self._fresh_connection()
            if queue.name in self._declared:
                return
            ch = await self._ctl(patience)
            name, dead = queue.name, queue.name + DEAD_SUFFIX
            await ch.queue_declare(name, durable=True)
            await ch.exchange_declare(dead, exchange_type='fanout', durable=True)
            await ch.queue_declare(dead, durable=True)
            await ch.queue_bind(dead, dead)
            self.declared_queues.update((name, dead))
            self.declared_exchanges.add(dead)
            exchange = queue.exchange_declaration
            if exchange is not None:
                await self._declare_exchange(ch, exchange, f'queue {name!r}: ')
                keys = (queue.topics or ('#',)) if exchange.type == 'topic' else ('',)
                for key in keys:
                    await ch.queue_bind(name, exchange.name, routing_key=key)
            self._declared.add(name)

    async def _declare_exchange(self, ch: AbstractChannel, exchange: Exchange, where: str) -> None:
        """Declare the exchange with its declared type, never one guessed from other queues."""
        try:
            await ch.exchange_declare(exchange.name, exchange_type=exchange.type, durable=True)
        except aiormq.ChannelPreconditionFailed as exc:
            raise DeclarationError(f'{where}exchange {exchange.name!r} exists on RabbitMQ with another type or '
                                   f'options than a durable {exchange.type} exchange: {exc}') from None
        self.declared_exchanges.add(exchange.name)

    async def _retry_queue(self, name: str, delay: float) -> str:
        ms = max(int(delay * 1000), 1)
        retry = f'{name}{RETRY_SUFFIX}{ms}'
        now = time.monotonic()
        self._fresh_connection()
        if now - self._retry_queues.get(retry, -RETRY_QUEUE_IDLE) < RETRY_QUEUE_IDLE / 2:
            return retry  # declared recently: its expiry lease is still long enough
        async with self._control_lock:
            ch = await self._ctl()
            await ch.queue_declare(retry, durable=True, arguments={
                'x-message-ttl': ms, 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': name,
                'x-expires': ms + int(RETRY_QUEUE_IDLE * 1000)})
        self._retry_queues[retry] = now
        self.declared_queues.add(retry)
        return retry

    # sending

    async def put(self, queue: Queue[Any], messages: list[bytes], delay: float = 0.0) -> None:
        await self.put_with(queue, messages, delay, {})

    async def put_with(self, queue: Queue[Any], messages: list[bytes], delay: float,
                       options: Mapping[str, Any]) -> None:
        """The 1.x keywords: ``properties`` (AMQP basic properties), ``exchange`` and ``topic``
        (publish through the exchange, the queue's own one by default, with the topic or the queue
        name as routing key). A delay goes through a TTL queue dead-lettering into the queue."""
        await self.declare_queue(queue)
        exchange: str | None = options.get('exchange')
        topic: str | None = options.get('topic')
        if topic is not None and exchange is None:
            exchange = queue.exchange
            if exchange is None:
                raise UsageError(f'queue {queue.name!r}: topic {topic!r} needs an exchange; the queue has none')
        if exchange is not None and delay > 0:
            raise UsageError(f'queue {queue.name!r}: a delayed send goes to the queue, not through exchange '
                            f'{exchange!r}')
        target, key = ('', await self._retry_queue(queue.name, delay)) if delay > 0 else ('', queue.name)
        if exchange is not None:
            target, key = exchange, topic or queue.name
        # one Properties each: aiormq writes a fresh message_id into the object it is given
        outgoing = [Outgoing(target, key, data, _user_properties(queue, options.get('properties')), mandatory=True)
                    for data in messages]
        if target:
            try:
                await self._publisher.publish(outgoing, f'exchange {target!r}')
            except aiormq.PublishError:
                raise QueueNotFound(f'queue {queue.name!r}: exchange {target!r} routed the message to no queue '
                                  f'(routing key {key!r})') from None
            except aiormq.ChannelNotFoundEntity:
                raise QueueNotFound(f'queue {queue.name!r}: no exchange {target!r} on RabbitMQ') from None
            return
        try:
            await self._publisher.publish(outgoing, f'queue {queue.name!r}')
        except aiormq.PublishError:
            # returned as unroutable: the queue was deleted behind our back; declare it and send again
            self.log.warning('Queue %s was missing on RabbitMQ; declared it again', queue.name)
            self._declared.discard(queue.name)
            await self.declare_queue(queue)
            await self._publisher.publish(outgoing, f'queue {queue.name!r}')

    async def publish(self, exchange: str, payload: Any, routing_key: str = '') -> int:
        """RabbitMQ routes by its own bindings. The payload is validated against the queues of the
        exchange this process declares; an exchange declared here is declared on RabbitMQ first.
        Returns 1 once RabbitMQ has routed the message to at least one queue (it does not say how
        many); no bound queue or no exchange at all is a LookupError."""
        local = [q.name for q in Queue.get_all().values() if q.routes(exchange, routing_key)]
        data = self.encode_for(local, payload)
        declared = Exchange.get_all().get(exchange)
        if declared is not None and declared.name not in self.declared_exchanges:
            async with self._control_lock:
                await self._declare_exchange(await self._ctl(), declared, '')
        try:
            await self._publisher.publish([Outgoing(exchange, routing_key, data, _properties(), mandatory=True)],
                                          f'exchange {exchange!r}')
        except aiormq.PublishError:
            raise QueueNotFound(f'No queue is bound to exchange {exchange!r} for key {routing_key!r}') from None
        except aiormq.ChannelNotFoundEntity:
            raise QueueNotFound(f'No exchange {exchange!r} on RabbitMQ') from None
        return 1

    # consuming

    async def _subscribe(self, queue: Queue[Any], count: int, patience: float) -> _Subscription:
        sub = self._subs.setdefault(queue.name, _Subscription())
        if sub.live:
            return sub
        again = sub.channel is not None
        await sub.close()
        running = self._running.get(queue.name)
        prefetch = running.consumer.concurrency if running else max(count, 1)
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

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery]:
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

    def _delivery(self, queue: Queue[Any], channel: AbstractChannel, message: DeliveredMessage) -> Delivery:
        properties = message.header.properties
        deliver = message.delivery
        tag = message.delivery_tag or 0
        token = _Token(channel, tag, properties)
        try:
            attempt = max(int(_headers(properties).get(ATTEMPT_HEADER, 1)), 1)
        except (TypeError, ValueError):
            attempt = 1
        meta = AMQPMeta(queue.name, channel, tag, bool(getattr(deliver, 'redelivered', False)),
                        message.exchange or '', message.routing_key or '', properties, token)
        delivery = Delivery(data=message.body, attempt=attempt, token=token, context={'amqp': meta})
        token.drop = partial(self._drop, queue, delivery)
        return delivery

    async def _drop(self, queue: Queue[Any], delivery: Delivery, reason: str) -> None:
        """Dead-letter on the handler's ``reject``/``nack``; if that fails, the message goes back now."""
        async with self._or_give_back(delivery.token):
            await self.dead_letter(queue, delivery, reason)

    async def ack(self, queue: Queue[Any], delivery: Delivery) -> None:
        if not await _settle(delivery.token, 'ack'):
            self.log.info('Queue %s: the channel of a handled message is gone; RabbitMQ will deliver it again',
                          queue.name)

    async def retry(self, queue: Queue[Any], delivery: Delivery, delay: float, reason: str) -> None:
        token: _Token = delivery.token
        if token.settled:
            return  # settled by the handler (autoack=False): not ours to retry
        headers = {**_fresh_headers(token.properties), ATTEMPT_HEADER: delivery.attempt + 1,
                   REASON_HEADER: reason[:MAX_REASON]}
        # a failure leaves the message unacked: the engine tries again, then releases it
        retry = await self._retry_queue(queue.name, delay)
        await self._publisher.publish([Outgoing('', retry, delivery.data, _properties(headers))],
                                      f'queue {retry!r}')
        await self.ack(queue, delivery)

    async def dead_letter(self, queue: Queue[Any], delivery: Delivery, reason: str) -> None:
        token: _Token = delivery.token
        if token.settled:
            return
        headers = {**_fresh_headers(token.properties), ATTEMPT_HEADER: delivery.attempt,
                   REASON_HEADER: reason[:MAX_REASON], DEAD_AT_HEADER: time.time()}
        dead = queue.name + DEAD_SUFFIX
        await self.declare_queue(queue)  # a failure leaves the message unacked: the engine tries again
        await self._publisher.publish([Outgoing(dead, '', delivery.data, _properties(headers))],
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

    async def release(self, queue: Queue[Any], deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            await _settle(delivery.token, 'nack', requeue=True)

    async def stop_consumers(self, consumers: Iterable[Consumer], grace: float) -> None:
        consumers = list(consumers)
        await super().stop_consumers(consumers, grace)
        for consumer in consumers:
            if consumer.queue.name not in self._running:
                sub = self._subs.pop(consumer.queue.name, None)
                if sub is not None:
                    await sub.close()  # prefetched, not yet handled: back to the queue

    # inspecting

    async def _count(self, name: str) -> int:
        async with self._control_lock:
            ch = await self._ctl()
            try:
                result = await ch.queue_declare(name, passive=True)
            except aiormq.ChannelNotFoundEntity:
                return 0
        return int(result.message_count or 0)

    async def queue_length(self, name: str) -> int:
        return await self._count(name)

    async def dead_letter_count(self, name: str) -> int:
        return await self._count(name + DEAD_SUFFIX)

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
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
        return letters

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
                    [Outgoing('', name, m.body, _properties(_fresh_headers(m.header.properties))) for m in batch],
                    f'queue {name!r}')
                await channel.basic_ack(batch[-1].delivery_tag or 0, multiple=True)
                moved += len(batch)
        finally:
            if not channel.is_closed:
                await channel.close()
        return moved

    async def close(self) -> None:
        for sub in self._subs.values():
            await sub.close()
        self._subs.clear()
        await self._publisher.close()
        await self._link.close()


_PROPERTY_NAMES = frozenset(('content_type', 'content_encoding', 'headers', 'delivery_mode', 'priority',
                             'correlation_id', 'reply_to', 'expiration', 'message_id', 'timestamp',
                             'message_type', 'user_id', 'app_id', 'cluster_id'))


def _user_properties(queue: Queue[Any], given: Mapping[str, Any] | None) -> spec.Basic.Properties:
    """Our defaults (JSON, persistent) overridden by the 1.x ``properties`` send keyword; aioamqp's
    ``type`` is pamqp's ``message_type``. An unknown property is a TypeError, not a dropped one."""
    if not given:
        return _properties()
    values = {('message_type' if key == 'type' else key): value for key, value in given.items()}
    unknown = sorted(set(values) - _PROPERTY_NAMES)
    if unknown:
        raise UsageError(f'queue {queue.name!r}: unknown AMQP properties {", ".join(map(repr, unknown))}')
    return spec.Basic.Properties(**{'content_type': CONTENT_TYPE, 'delivery_mode': PERSISTENT, **values})


def _dead_letter(name: str, message: DeliveredMessage) -> DeadLetter:
    headers = _headers(message.header.properties)
    reason = headers.get(REASON_HEADER, '')
    if isinstance(reason, bytes):
        reason = reason.decode('utf-8', 'replace')
    try:
        attempts = int(headers.get(ATTEMPT_HEADER, 1))
        died = float(headers.get(DEAD_AT_HEADER, 0.0))
    except (TypeError, ValueError):
        attempts, died = 1, 0.0
    return DeadLetter(name, message.body, str(reason), attempts, died)


class AMQPSignalBus(AbstractSignalBus):
    """Signals over the topic exchange named by the prefix, read through one exclusive queue per bus."""

    max_remembered_requests = 10_000
    #: messages RabbitMQ hands the bus unacknowledged: aiormq runs a task per delivery, and the bus
    #: acknowledges one only once the backlog has room for it, so this bounds those tasks
    prefetch = 256

    def __init__(self, dsn: str, prefix: str = 'PUBSUB', log: logging.Logger | None = None, *,
                 reconnect_timeout: float = 60.0, **options: Any) -> None:
        super().__init__(dsn, prefix, log, **options)
        self.reconnect_timeout = reconnect_timeout
        self._link = Link(dsn, self.log, f'microagent bus {prefix} {self.uid[:8]}')
        self._publisher = Publisher(self._link, reconnect_timeout, self._declare_exchange)
        self.queue_name = f'{prefix}.bus.{self.uid}'
        self._keys: list[str] = []
        self._channel: AbstractChannel | None = None
        self._ready = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._reply_to: dict[str, str] = {}

    async def _declare_exchange(self, channel: AbstractChannel) -> None:
        await channel.exchange_declare(self.prefix, exchange_type='topic', durable=True)

    # publishing

    async def publish(self, channel: str, data: bytes) -> None:
        name, sender, request_id = self._parse_channel(channel)
        if name is None:
            raise InvalidArgument(f'channel {channel!r} is not under the prefix {self.prefix!r} of this bus')
        if name == RESPONSE_SIGNAL:
            reply_to = self._reply_to.pop(request_id, None)
            if reply_to is None:
                self.log.debug('No caller known for the answer to request %s', request_id)
                return
            props = spec.Basic.Properties(content_type=CONTENT_TYPE, message_type=RESPONSE_SIGNAL,
                                          correlation_id=request_id, app_id=sender)
            out = Outgoing('', reply_to, data, props)
        else:
            props = spec.Basic.Properties(content_type=CONTENT_TYPE, message_type=name,
                                          correlation_id=request_id or None,
                                          reply_to=self.queue_name if request_id else None)
            out = Outgoing(self.prefix, f'{name}.{sender}', data, props)
        await self._publisher.publish([out], f'signal {name!r}')

    # receiving

    def _binding_key(self, pattern: str) -> str | None:
        name, sender, _ = self._parse_channel(pattern)
        if name is None:
            raise InvalidArgument(f'pattern {pattern!r} is not under the prefix {self.prefix!r} of this bus')
        if name == RESPONSE_SIGNAL:
            return None  # answers come straight to this bus's queue
        return f'{name}.{"#" if sender == "*" else sender}'

    async def subscribe(self, pattern: str) -> None:
        key = self._binding_key(pattern)
        if key is not None and key not in self._keys:
            self._keys.append(key)
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._keep_subscribed(), name=f'amqp-bus:{self.prefix}')
        try:
            async with asyncio.timeout(self.reconnect_timeout):
                await self._ready.wait()
        except TimeoutError:
            raise ConnectionFailed(f'{self._link.name}: could not subscribe on RabbitMQ at '
                                   f'{self._link.safe_dsn} in {self.reconnect_timeout}s') from None
        channel = self._channel
        if key is not None and channel is not None:
            try:
                await channel.queue_bind(self.queue_name, self.prefix, routing_key=key)
            except LINK_ERRORS:
                if not channel.is_closed:
                    raise  # else: the watcher binds every key again on reconnection

    async def _keep_subscribed(self) -> None:
        """Declare the bus queue, bind every key and consume; again after each break, with backoff."""
        failures, subscribed = 0, False
        while True:
            channel: AbstractChannel | None = None
            try:
                channel = await self._link.channel()
                await self._declare_exchange(channel)
                await channel.queue_declare(self.queue_name, exclusive=True, auto_delete=True)
                for key in list(self._keys):
                    await channel.queue_bind(self.queue_name, self.prefix, routing_key=key)
                await channel.basic_qos(prefetch_count=self.prefetch)
                await channel.basic_consume(self.queue_name, self._on_message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = backoff(failures, 0.2, 10.0)
                self.log.warning('%s: subscribing failed (%s); retry %d in %.1fs',
                                 self._link.name, self._link.scrub(exc), failures, delay)
                if channel is not None and not channel.is_closed:
                    with suppress(Exception):  # the loop must go on whatever closing says
                        await channel.close()
                await asyncio.sleep(delay)
                continue
            if subscribed:
                self.log.info('%s: subscribed again to %d signal(s)', self._link.name, len(self._keys))
            failures, subscribed = 0, True
            self._channel = channel
            self._ready.set()
            try:
                await channel.closing
            except Exception as exc:  # the reason the channel closed
                self.log.warning('%s: subscription broken (%s); subscribing again', self._link.name,
                                 self._link.scrub(exc))
            self._ready.clear()
            self._channel = None

    async def _on_message(self, message: DeliveredMessage) -> None:
        """Hand a delivery to the engine; acknowledge it once the backlog has room (backpressure)."""
        try:
            channel = self._channel_of(message)
            if channel is not None:
                await self.deliver(channel, message.body)
        except Exception as exc:  # the engine never raises; this guards the mapping above
            self.log.warning('%s: dropped a message routed %s: %s: %s', self._link.name,
                             shown(message.routing_key or ''), type(exc).__name__, exc)
        finally:
            with suppress(Exception):  # a closed channel: RabbitMQ forgets it with the exclusive queue
                await message.channel.basic_ack(message.delivery_tag or 0)

    def _channel_of(self, message: DeliveredMessage) -> str | None:
        """The 1.x channel of a delivery. The routing key is the truth: a ``message_type`` label
        naming another signal drops the message (with a warning), it never reroutes it."""
        props = message.header.properties
        key, label = message.routing_key or '', props.message_type
        request_id = props.correlation_id or ''
        if not message.exchange:  # the default exchange: an answer sent straight to this bus's queue
            if label != RESPONSE_SIGNAL or '#' in request_id:
                return self._dropped(key, label, 'not an RPC answer')
            return f'{self.prefix}:{RESPONSE_SIGNAL}:#{request_id}'
        name = label or self._name_in(key)
        if not key.startswith(name + '.'):
            return self._dropped(key, label, f'its routing key is not of signal {name!r}')
        sender = key[len(name) + 1:]
        if name == RESPONSE_SIGNAL or '#' in sender or '#' in request_id:
            return self._dropped(key, label, 'not a signal of this bus')
        channel = f'{self.prefix}:{name}:{sender}'
        if request_id:
            channel += f'#{request_id}'
            if props.reply_to:
                self._remember(request_id, props.reply_to)
        return channel

    def _name_in(self, key: str) -> str:
        """The signal of an unlabelled routing key ``{name}.{sender}``: the longest received name
        it starts with (names may hold dots), else its first word."""
        names = [name for name in self.receivers if key.startswith(name + '.')]
        return max(names, key=len) if names else key.partition('.')[0]

    def _dropped(self, key: str, label: str | None, why: str) -> str | None:
        self.log.warning('%s: dropped a message routed %s labelled %s: %s', self._link.name, shown(key),
                         shown(label or ''), why)
        return None

    def _remember(self, request_id: str, reply_to: str) -> None:
        if len(self._reply_to) >= self.max_remembered_requests:
            del self._reply_to[next(iter(self._reply_to))]  # the oldest request: its caller gave up
        self._reply_to[request_id] = reply_to

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        self._ready.clear()
        await self._publisher.close()
        await self._link.close()
