"""Signal groups on RabbitMQ: ``AMQPGroupTransport``, the group transport of the bus (``groups.py``
at the package root tells what a group transport is).

A group's store is a queue of the queue transport that is also bound to the bus exchange. For
signal ``order`` and group ``billing`` on a bus of prefix ``PUBSUB``:

* ``PUBSUB.group.order@billing``: a durable queue bound to the topic exchange ``PUBSUB`` with key
  ``order.#`` (signals travel as ``{name}.{sender}``), so RabbitMQ itself copies every publish of
  the signal into it, and the bus's publish path is the same as without groups. Its retention is
  ``x-max-length`` (``x-overflow: drop-head``: the oldest go first) and ``x-message-ttl`` from the
  bus's ``GroupOptions``. Classic by default; quorum with the bus's ``queue_type='quorum'``, whose
  ``delivery_limit`` this transport applies (``store_arguments``).
* ``PUBSUB.group.order@billing.retry.{ms}`` and ``PUBSUB.group.order@billing.dead``: the delay
  queues and the dead letters, exactly as for a queue (``queue``, ``dead_letters``).

The members consume the store with prefetch = concurrency and ack after the handler. RabbitMQ
gives a dead member's unacknowledged signals back to the others as soon as its connection is gone
(at once for a closed socket, within the heartbeat for a silent peer), so ``visibility_timeout`` is
not needed here; a live member keeps what it holds (up to the server's ``consumer_timeout``). A
queue only gets what is published after it is bound, so ``start='first'`` is ``'now'`` here.

The sender is the rest of the routing key after the signal's name; a signal that went through a
delay queue or the dead letters (published to a queue, not the exchange) carries it in the reserved
``x-sender`` header. A store bound with ``order.#`` also hears signal ``order.big`` (names may hold
dots): a message labelled (``type`` property) with another signal is acked and skipped.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel
from pamqp import commands as spec
from pamqp.common import FieldTable

from microagent.backends.amqp.dead_letters import DEAD_SUFFIX
from microagent.backends.amqp.declarations import RETRY_SUFFIX
from microagent.backends.amqp.queue import AMQPQueueTransport
from microagent.backends.amqp.queue_args import DEFAULT_DELIVERY_LIMIT, QueueArguments, server_version
from microagent.backends.amqp.settle import AMQPMeta, Token
from microagent.errors import DeclarationError, UsageError
from microagent.groups import SENDER, GroupOptions, GroupQueue, split_store_name
from microagent.logs import shown
from microagent.message import GROUP_SENDER, REPLY_TO, REQUEST_ID, Envelope
from microagent.queue import Queue, QueueType
from microagent.transport import DeadLetter, Delivery, QueueDepth, SelectDeadLetter

__all__ = ['AMQPGroupTransport', 'store_arguments']

#: RabbitMQ's limit on a queue name, in bytes; a store's delay queues add ``.retry.{ms}`` to its name
MAX_QUEUE_NAME = 255
_RETRY_ROOM = len(RETRY_SUFFIX) + 10
#: a quorum queue's count of the times it got a message back unacknowledged
DELIVERY_COUNT = 'x-delivery-count'


def store_arguments(args: QueueArguments, options: GroupOptions) -> FieldTable:
    """The declaration arguments of a store: its retention, and its type. A store has no dead-letter
    exchange: RabbitMQ would dead-letter into it what the retention drops. So a quorum store has no
    delivery limit of its own (RabbitMQ would drop what passes it; 4.x sets one by default, lifted
    with -1): the transport dead-letters such a signal when it is fetched (``x-delivery-count``)."""
    table: FieldTable = {'x-max-length': options.max_length, 'x-overflow': 'drop-head',
                         'x-message-ttl': max(int(options.max_age * 1000), 1)}
    if args.quorum:
        table['x-queue-type'] = 'quorum'
        if args.version >= (4,):
            table['x-delivery-limit'] = -1
    return table


def returns(properties: spec.Basic.Properties) -> int:
    """How often a quorum queue got the message back unacknowledged (its ``x-delivery-count``)."""
    count = (properties.headers or {}).get(DELIVERY_COUNT)
    return count if type(count) is int and count > 0 else 0


class _Store(GroupQueue):
    """A group's store as the queue transport sees it: named as its RabbitMQ queue."""

    def __init__(self, store: GroupQueue, queue_name: str) -> None:
        super().__init__(store.signal, store.group, start=store.start, options=store.options)
        self.source = store
        self.name = queue_name


class AMQPGroupTransport(AMQPQueueTransport):
    """The stores of a bus's signal groups: durable queues bound to the bus exchange ``prefix``,
    with the queue transport's acks, delay queues and dead letters. Tools name a store
    ``signal@group``; its RabbitMQ queue is ``{prefix}.group.{signal}@{group}``."""

    unsettled_fate = 'it stays unacked; RabbitMQ gives it to another member when its channel closes'

    def __init__(self, dsn: str | Sequence[str], prefix: str, log: logging.Logger | None = None, *,
                 reconnect_timeout: float = 60.0, name: str = '', queue_type: QueueType = 'classic',
                 delivery_limit: int | None = DEFAULT_DELIVERY_LIMIT) -> None:
        super().__init__(dsn, log or logging.getLogger('microagent.bus'), reconnect_timeout=reconnect_timeout,
                         name=name, queue_type=queue_type, delivery_limit=delivery_limit)
        self._link.name = name or f'microagent groups {prefix} {self.uid[:8]}'
        self.prefix = prefix
        self._stores: dict[str, _Store] = {}

    def __repr__(self) -> str:
        return f'<AMQPGroupTransport {self.prefix}>'

    # names

    def queue_name(self, name: str) -> str:
        """The RabbitMQ queue of store ``signal@group``; a ValueError for another form of name."""
        split_store_name(name)
        return f'{self.prefix}.group.{name}'

    def _store(self, queue: Queue[Any]) -> _Store:
        if isinstance(queue, _Store):
            return queue
        if not isinstance(queue, GroupQueue):
            raise UsageError(f'{self!r} holds signal group stores, not queue {queue.name!r}')
        store = self._stores.get(queue.name)
        if store is None or store.source is not queue:
            name = self.queue_name(queue.name)
            if len(name.encode()) + _RETRY_ROOM > MAX_QUEUE_NAME:
                raise DeclarationError(f'group store {queue.name!r}: its RabbitMQ queue {name!r} and delay queues '
                                       f'would be longer than {MAX_QUEUE_NAME} bytes; use shorter names')
            store = self._stores[queue.name] = _Store(queue, name)
        return store

    # declaring

    async def _declare_on(self, queue: Queue[Any], ch: AbstractChannel) -> None:
        """The store bound to the bus exchange, and its dead letters (the control lock is held).
        Declaring it again with the same options is a no-op; with others, a DeclarationError."""
        self._fresh_connection()
        if queue.name in self._declared:
            return
        assert isinstance(queue, _Store)
        name, dead = queue.name, queue.name + DEAD_SUFFIX
        args = self.arguments(queue, server_version(ch.connection.server_properties))
        wanted = store_arguments(args, queue.options)
        try:
            await ch.queue_declare(name, durable=True, arguments=wanted)
        except aiormq.ChannelPreconditionFailed as exc:
            shown_args = ', '.join(f'{k}={v!r}' for k, v in wanted.items())
            raise DeclarationError(
                f'group store {queue.source.name!r}: RabbitMQ queue {name!r} exists with other arguments than '
                f'{shown_args} (another retention in GroupOptions, or another queue_type, on another member?); '
                f'RabbitMQ cannot change them in place: give every member of the group the same options, or '
                f'drain and delete the queue ({exc})') from None
        await ch.exchange_declare(dead, exchange_type='fanout', durable=True)
        await self._queue_declare(ch, dead, args, args.dead())
        await ch.queue_bind(dead, dead)
        await ch.exchange_declare(self.prefix, exchange_type='topic', durable=True)  # the bus's, as it declares it
        await ch.queue_bind(name, self.prefix, routing_key=f'{queue.signal.name}.#')
        self._arguments[name] = args
        self.declared_queues.update((name, dead))
        self.declared_exchanges.add(dead)
        self._declared.add(name)

    async def declare(self, queue: Queue[Any]) -> None:
        await super().declare(self._store(queue))

    async def put(self, queue: Queue[Any], envelopes: Sequence[Envelope], *, delay: float = 0.0,
                  **options: Any) -> None:
        raise UsageError(f'{queue.name!r} is a signal group store: signals reach it through the bus')

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> int:
        raise UsageError('a signal group transport does not publish: signals reach a store through the bus')

    # consuming

    async def consume(self, queue: Queue[Any], concurrency: int) -> None:
        await super().consume(self._store(queue), concurrency)

    async def stop_consuming(self, queue: Queue[Any]) -> None:
        await super().stop_consuming(self._store(queue))

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery[Token]]:
        store = self._store(queue)
        fetched = await super().fetch(store, count, timeout)
        args = self._arguments.get(store.name)
        limit = args.delivery_limit if args is not None and args.quorum else None
        deliveries = []
        for delivery in fetched:
            meta = delivery.context['amqp']
            assert isinstance(meta, AMQPMeta)
            signal = store.signal.name
            label = meta.properties.message_type
            if meta.exchange == self.prefix and label and label != signal:
                # a longer name under the same key prefix (``order.big`` heard by ``order.#``): its own stores have it
                self._skipped(store, meta)
                await self.ack(store, delivery)
                continue
            delivery = self._grouped(delivery, meta, signal)
            if limit is not None and returns(meta.properties) > limit:
                await self.dead_letter(store, delivery, f'returned unacknowledged {returns(meta.properties)} times, '
                                       f'more than the delivery limit of {limit} (a member crashed or lost its '
                                       'connection while holding it)')
                continue
            deliveries.append(delivery)
        return deliveries

    def _grouped(self, delivery: Delivery[Token], meta: AMQPMeta, signal: str) -> Delivery[Token]:
        """The sender in the context (from the routing key, or the ``x-sender`` header once it went
        through a delay queue or the dead letters); a 1.x request's ids as headers."""
        headers = dict(delivery.envelope.headers or {})
        kept = headers.pop(GROUP_SENDER, '')
        if meta.exchange == self.prefix and meta.routing_key.startswith(signal + '.'):
            sender = meta.routing_key[len(signal) + 1:]
        else:
            sender = kept
        props = meta.properties
        if props.reply_to and props.correlation_id:  # a request, maybe from a 1.x peer without the headers
            headers.setdefault(REQUEST_ID, props.correlation_id)
            headers.setdefault(REPLY_TO, props.reply_to)
        delivery.envelope = Envelope(delivery.envelope.body, headers or None)
        delivery.context = {**delivery.context, SENDER: sender}
        return delivery

    @staticmethod
    def _keep_sender(delivery: Delivery[Token]) -> None:
        """Carry the sender in the headers table of what is moved to a delay queue or the dead letters."""
        sender = delivery.context.get(SENDER)
        if isinstance(sender, str) and sender:
            props = delivery.token.properties
            props.headers = {**(props.headers or {}), GROUP_SENDER: sender}

    async def ack(self, queue: Queue[Any], delivery: Delivery[Token]) -> None:
        await super().ack(self._store(queue), delivery)

    async def retry(self, queue: Queue[Any], delivery: Delivery[Token], delay: float, reason: str) -> None:
        self._keep_sender(delivery)
        await super().retry(self._store(queue), delivery, delay, reason)

    async def dead_letter(self, queue: Queue[Any], delivery: Delivery[Token], reason: str) -> None:
        self._keep_sender(delivery)
        await super().dead_letter(self._store(queue), delivery, reason)

    async def release(self, queue: Queue[Any], deliveries: Sequence[Delivery[Token]]) -> None:
        await super().release(self._store(queue), deliveries)

    # inspecting, by store name

    async def length(self, name: str) -> int:
        return await super().length(self.queue_name(name))

    async def depth(self, name: str) -> QueueDepth:
        return await super().depth(self.queue_name(name))

    async def dead_letter_count(self, name: str) -> int:
        return await super().dead_letter_count(self.queue_name(name))

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        return [_named(name, letter) for letter in await super().dead_letters(self.queue_name(name), limit)]

    async def requeue_dead_letters(self, name: str) -> int:
        return await super().requeue_dead_letters(self.queue_name(name))

    async def remove_dead_letters(self, name: str, select: SelectDeadLetter, *, requeue: bool) -> int:
        def named(position: int, letter: DeadLetter) -> bool:
            return select(position, _named(name, letter))
        return await super().remove_dead_letters(self.queue_name(name), named, requeue=requeue)

    async def exists(self, name: str) -> bool:
        return await super().exists(self.queue_name(name))

    def _skipped(self, store: _Store, meta: AMQPMeta) -> None:
        self.log.debug('%s: store %s skipped a message of signal %s', self._link.name, store.source.name,
                       shown(meta.properties.message_type or ''))


def _named(name: str, letter: DeadLetter) -> DeadLetter:
    """A dead letter of a store as tools see it: named ``signal@group``, without the sender header."""
    headers = letter.envelope.headers
    if headers and GROUP_SENDER in headers:
        headers = {k: v for k, v in headers.items() if k != GROUP_SENDER} or None
    return dataclasses.replace(letter, queue=name, envelope=Envelope(letter.envelope.body, headers))

