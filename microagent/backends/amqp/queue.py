"""The RabbitMQ queue transport: ``AMQPQueueTransport``, the ``BrokerTransport`` of the backend.

Layout on the server, for a queue ``mailer``:

* ``mailer``: a durable queue, fed through the default exchange; bound to the queue's ``exchange``
  with the type that exchange is declared with (``Exchange``, or implied by the queue's form);
* ``mailer.retry.{ms}``: delay queues (queue TTL, dead-lettered back to ``mailer``) that hold a
  failed message until its retry is due, or a message sent with ``delay``; they expire when unused;
* ``mailer.dead``: a fanout exchange and a durable queue holding dead letters, with the reason,
  the attempt count and the time in headers (see ``dead_letters``).

Queues are classic by default; ``queue_type='quorum'`` (on the broker, or per ``Queue``) declares
all three as replicated quorum queues, and RabbitMQ itself dead-letters into ``mailer.dead`` what
comes back unacknowledged more than ``delivery_limit`` times (see ``queue_args``). The DSN may
name several hosts of a cluster (``amqp://u:p@h1,h2,h3/vhost``, see ``hosts``).
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel, DeliveredMessage

from microagent.backends.amqp.acks import SettledAcks
from microagent.backends.amqp.dead_letters import DEAD_SUFFIX, DeadLetterQueues
from microagent.backends.amqp.declarations import RETRY_SUFFIX, QueueDeclarations
from microagent.backends.amqp.headers import (
    ATTEMPT_HEADER,
    DEAD_AT_HEADER,
    REASON_HEADER,
    carried,
    fresh_table,
    received_headers,
    send_properties,
    user_properties,
)
from microagent.backends.amqp.limits import fit_reason
from microagent.backends.amqp.link import PING_PATIENCE, Outgoing, Publisher, passive_declare
from microagent.backends.amqp.queue_args import DEFAULT_DELIVERY_LIMIT
from microagent.backends.amqp.settle import RETURN_WAIT, AMQPMeta, Token, settle, until
from microagent.errors import QueueNotFound, UsageError
from microagent.exchange import Exchange
from microagent.message import CORRELATION_ID, Envelope
from microagent.queue import Queue, QueueType
from microagent.transport import DeadLetter, Delivery, QueueDepth, SelectDeadLetter

__all__ = ['AMQPQueueTransport']

MAX_REASON = 4096


class _Subscription:
    """basic_consume into a local buffer that ``fetch`` drains; prefetch bounds the buffer."""

    def __init__(self) -> None:
        self.channel: AbstractChannel | None = None
        self.acks: SettledAcks | None = None  # the channel's
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
        acks, self.acks = self.acks, None
        self.buffer.clear()
        if channel is not None and not channel.is_closed:
            if acks is not None:
                await acks.send_now()  # the handled ones are acknowledged, not delivered again
            await channel.close()  # unacked messages go back to the queue
        if acks is not None:
            acks.close()


class AMQPQueueTransport(QueueDeclarations):
    """Durable RabbitMQ queues with publisher confirms, prefetch = the consumer's ``concurrency``,
    retries through delay queues and a dead-letter exchange and queue per queue."""

    #: the 1.x send keywords: AMQP ``properties``, and publishing through an ``exchange`` with a ``topic``;
    #: ``priority``: the message's ``priority`` property (the queue has ``x-max-priority``)
    send_options = frozenset(('properties', 'exchange', 'topic', 'priority'))
    #: a cancelled fetch loses nothing: what it buffered stays unacked and returns when the channel closes
    fetch_cancel_safe = True
    unsettled_fate = 'it stays unacked; RabbitMQ delivers it again when its channel closes'

    def __init__(self, dsn: str | Sequence[str], log: logging.Logger | None = None, *,
                 reconnect_timeout: float = 60.0, name: str = '', queue_type: QueueType = 'classic',
                 delivery_limit: int | None = DEFAULT_DELIVERY_LIMIT) -> None:
        self.uid = uuid.uuid4().hex
        super().__init__(dsn, log or logging.getLogger('microagent.broker'),
                         name or f'microagent broker {self.uid[:8]}', reconnect_timeout, queue_type, delivery_limit)
        self._publisher = Publisher(self._link, reconnect_timeout)
        self._subs: dict[str, _Subscription] = {}
        self._prefetch: dict[str, int] = {}
        # handed to the engine, by queue, for ``depth``: weak, so a token a handler settled itself
        # (autoack=False) goes with its delivery; the engine's settling removes the others at once
        self._taken: dict[str, weakref.WeakSet[Token]] = {}
        self._dead = DeadLetterQueues(self._link, self._publisher, self._count, lambda: self.reconnect_timeout)

    def rename(self, name: str) -> None:
        """Name the connection as RabbitMQ shows it (the engine's id, so operators find it)."""
        self._link.name = name

    @property
    def dsn(self) -> str:
        """The DSN, several hosts joined in one string."""
        return self._link.dsn

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
        if 'priority' in options:
            given = {**(given or {}), 'priority': options['priority']}
        outgoing = [Outgoing('', queue.name, body, user_properties(queue.name, headers, given) if given
                             else send_properties(headers), mandatory=True) for body, headers in envelopes]
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
        out = Outgoing(exchange, routing_key, envelope.body, send_properties(envelope.headers), mandatory=True)
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

        if not await until(dropped):
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
            sub.channel, sub.acks = channel, SettledAcks(channel, prefetch // 4)
            channel.closing.add_done_callback(partial(sub.on_close, channel))
            await channel.basic_consume(queue.name, partial(sub.on_message, channel))
        except BaseException:
            sub.channel = None
            await channel.close()
            raise
        if again:
            self.log.info('Queue %s: consuming again', queue.name)
        return sub

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery[Token]]:
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
        return [self._delivery(queue, channel, message, sub.acks) for message in taken]

    def _delivery(self, queue: Queue[Any], channel: AbstractChannel, message: DeliveredMessage,
                  acks: SettledAcks | None = None) -> Delivery[Token]:
        properties = message.header.properties
        redelivered = bool(getattr(message.delivery, 'redelivered', False))
        tag = message.delivery_tag or 0
        token = Token(channel, tag, properties, acks=acks)
        attempt = 1
        table = properties.headers
        if table and ATTEMPT_HEADER in table:
            try:
                attempt = max(int(table[ATTEMPT_HEADER]), 1)  # type: ignore[arg-type]  # a bad type: TypeError
            except (TypeError, ValueError):
                attempt = 1
        headers = received_headers(properties)
        if CORRELATION_ID not in headers and properties.correlation_id:
            headers[CORRELATION_ID] = properties.correlation_id
        meta = AMQPMeta(queue.name, channel, tag, redelivered, message.exchange or '', message.routing_key or '',
                        properties, token)
        delivery = Delivery(Envelope(message.body, headers or None), token, attempt, redelivered, {'amqp': meta})
        self._taken.setdefault(queue.name, weakref.WeakSet()).add(token)
        token.drop = partial(self._drop, queue, delivery)
        return delivery

    async def _drop(self, queue: Queue[Any], delivery: Delivery[Token], reason: str) -> None:
        """Dead-letter on the handler's ``reject``/``nack``; if that fails, the message goes back now."""
        async with self._or_give_back(delivery.token):
            await self.dead_letter(queue, delivery, reason)

    def _forget(self, queue: Queue[Any], token: Token) -> None:
        taken = self._taken.get(queue.name)
        if taken is not None:
            taken.discard(token)

    async def ack(self, queue: Queue[Any], delivery: Delivery[Token]) -> None:
        acked = await settle(delivery.token, 'ack')
        self._forget(queue, delivery.token)
        if not acked:
            self.log.info('Queue %s: the channel of a handled message is gone; RabbitMQ will deliver it again',
                          queue.name)

    async def retry(self, queue: Queue[Any], delivery: Delivery[Token], delay: float, reason: str) -> None:
        token = delivery.token
        if token.settled:
            return  # settled by the handler (autoack=False): not ours to retry
        properties = carried(token.properties, {**fresh_table(token.properties), ATTEMPT_HEADER: delivery.attempt + 1})
        body = delivery.envelope.body
        fit_reason(properties, body, REASON_HEADER, reason[:MAX_REASON], await self._publisher.frame_max())
        # a failure leaves the message unacked: the engine tries again, then releases it
        retry = await self._retry_queue(queue, delay)
        await self._publisher.publish([Outgoing('', retry, body, properties)], f'queue {retry!r}')
        await self.ack(queue, delivery)

    async def dead_letter(self, queue: Queue[Any], delivery: Delivery[Token], reason: str) -> None:
        token = delivery.token
        if token.settled:
            return
        table = {**fresh_table(token.properties), ATTEMPT_HEADER: delivery.attempt, DEAD_AT_HEADER: time.time()}
        properties, body = carried(token.properties, table), delivery.envelope.body
        fit_reason(properties, body, REASON_HEADER, reason[:MAX_REASON], await self._publisher.frame_max())
        dead = queue.name + DEAD_SUFFIX
        await self.declare(queue)  # a failure leaves the message unacked: the engine tries again
        await self._publisher.publish([Outgoing(dead, '', body, properties)], f'exchange {dead!r}')
        await self.ack(queue, delivery)

    @asynccontextmanager
    async def _or_give_back(self, token: Token) -> AsyncIterator[None]:
        """When moving a message fails, return it to its queue now rather than hold it unacked."""
        try:
            yield
        except Exception:
            with suppress(Exception):
                await settle(token, 'nack', requeue=True)
            raise

    async def release(self, queue: Queue[Any], deliveries: Sequence[Delivery[Token]]) -> None:
        for delivery in deliveries:
            await settle(delivery.token, 'nack', requeue=True)
            self._forget(queue, delivery.token)

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

    async def depth(self, name: str) -> QueueDepth:
        """Ready: the queue's count on the server. RabbitMQ lists neither queues nor unacked messages
        over AMQP, so delayed counts the delay queues this transport declared (its retries and
        delayed sends) and in flight what it holds unsettled, prefetched ones included."""
        prefix = name + RETRY_SUFFIX
        delay_queues = sorted(q for q in self.declared_queues if q.startswith(prefix))
        ready, *delayed = await asyncio.gather(self._count(name), *map(self._count, delay_queues))
        held = [token for token in self._taken.get(name, ()) if not token.settled and not token.channel.is_closed]
        sub = self._subs.get(name)
        return QueueDepth(ready, sum(delayed), len(held) + (len(sub.buffer) if sub else 0))

    async def dead_letter_count(self, name: str) -> int:
        return await self._count(name + DEAD_SUFFIX)

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        return await self._dead.look(name, limit)

    async def requeue_dead_letters(self, name: str) -> int:
        return await self._dead.requeue(name)

    async def remove_dead_letters(self, name: str, select: SelectDeadLetter, *, requeue: bool) -> int:
        """Get every dead letter (the count when asked), publish the picked ones back when
        ``requeue``, ack them, and return the others to the dead-letter queue in their order."""
        return await self._dead.remove(name, select, requeue=requeue)

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
        await self._on_control(passive_declare, patience=PING_PATIENCE)

    async def close(self) -> None:
        for sub in self._subs.values():
            await sub.close()
        self._subs.clear()
        await self._publisher.close()
        await self._link.close()


def _to(out: Outgoing, exchange: str, key: str) -> Outgoing:
    return Outgoing(exchange, key, out.body, out.properties, out.mandatory)

