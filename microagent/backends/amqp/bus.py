"""The RabbitMQ bus transport: ``AMQPBusTransport``, the ``BusTransport`` of the backend.

Signals go to the topic exchange named by the bus prefix with routing key ``{name}.{sender}``; each
bus reads one exclusive auto-delete queue, and RPC answers go straight to the caller's queue
(``reply_to``) with the request id as correlation id, as 1.x peers expect. A receiver answers only
to a reply address of this form, the bus queue of a caller on the same prefix (``{prefix}.bus.{uid}``):
a request naming any other queue (a work queue, say) is dropped, with one warning a minute per
sender, so an answer never lands where it does not belong. A message from a 1.x
sender has no headers table: it arrives with no headers, or only what its properties name.
"""
from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Collection, Sequence
from contextlib import suppress

from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from microagent.backends.amqp.acks import BatchedAcks
from microagent.backends.amqp.groups import AMQPGroupTransport
from microagent.backends.amqp.headers import CONTENT_TYPE, PERSISTENT, received_headers
from microagent.backends.amqp.link import LINK_ERRORS, PING_PATIENCE, Link, Outgoing, Publisher, passive_declare
from microagent.backends.amqp.queue_args import DEFAULT_DELIVERY_LIMIT
from microagent.errors import ConnectionFailed
from microagent.logs import LogLimiter, shown
from microagent.message import MESSAGE_ID, REPLY_TO, REQUEST_ID, Envelope
from microagent.queue import QueueType, check_delivery_limit, check_queue_type
from microagent.retry import Retrier
from microagent.signal import RESPONSE_SIGNAL
from microagent.transport import Deliver, DeliverReply

__all__ = ['AMQPBusTransport']


class AMQPBusTransport:
    """Signals over the topic exchange named by the prefix, read through one exclusive queue per bus."""

    #: messages RabbitMQ hands the bus unacknowledged: aiormq runs a task per delivery, and the bus
    #: acknowledges one only once the engine's backlog has room for it, so this bounds those tasks
    prefetch = 256
    #: at most one warning per sender in this many seconds about requests naming a foreign reply address
    reply_warning_interval = 60.0

    def __init__(self, dsn: str | Sequence[str], prefix: str = 'PUBSUB', log: logging.Logger | None = None, *,
                 reconnect_timeout: float = 60.0, name: str = '', queue_type: QueueType = 'classic',
                 delivery_limit: int | None = DEFAULT_DELIVERY_LIMIT) -> None:
        self.uid = uuid.uuid4().hex
        self.prefix = prefix
        self.log = log or logging.getLogger('microagent.bus')
        self.reconnect_timeout = reconnect_timeout
        self._link = Link(dsn, self.log, name or f'microagent bus {prefix} {self.uid[:8]}')
        self._publisher = Publisher(self._link, reconnect_timeout, self._declare_exchange)
        self.queue_name = f'{prefix}.bus.{self.uid}'
        self._reply_form = re.compile(rf'{re.escape(prefix)}\.bus\.[0-9a-f]{{32}}')
        self._refused_replies = LogLimiter(self.reply_warning_interval)
        self._names: set[str] = set()
        self._keys: list[str] = []
        self._deliver: Deliver | None = None
        self._deliver_reply: DeliverReply | None = None
        self._channel: AbstractChannel | None = None
        self._acks: BatchedAcks | None = None  # of the channel read from
        self._ready = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        #: the type (and quorum delivery limit) of the stores of signal groups (``groups``)
        self.queue_type = check_queue_type(queue_type, 'AMQP bus') or 'classic'
        self.delivery_limit = check_delivery_limit(delivery_limit, 'AMQP bus')

    def groups(self) -> AMQPGroupTransport:
        """The stores of this bus's signal groups: durable queues bound to the prefix exchange, on a
        connection of their own (see ``groups``)."""
        return AMQPGroupTransport(self._link.dsns, self.prefix, self.log, reconnect_timeout=self.reconnect_timeout,
                                  name=f'{self._link.name} groups', queue_type=self.queue_type,
                                  delivery_limit=self.delivery_limit)

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
        the request id in ``reply_to`` and ``correlation_id``, where 1.x peers read them. Persistent:
        the durable queue of a signal group keeps it across a RabbitMQ restart (the bus queues are
        not durable, so RabbitMQ writes nothing to disk for them)."""
        headers = envelope.headers
        if headers:
            props = spec.Basic.Properties(content_type=CONTENT_TYPE, message_type=name, delivery_mode=PERSISTENT,
                                          headers=headers if type(headers) is dict else dict(headers),
                                          message_id=headers.get(MESSAGE_ID),
                                          correlation_id=headers.get(REQUEST_ID), reply_to=headers.get(REPLY_TO))
        else:
            props = spec.Basic.Properties(content_type=CONTENT_TYPE, message_type=name, delivery_mode=PERSISTENT)
        await self._publisher.publish([Outgoing(self.prefix, f'{name}.{sender}', envelope.body, props)],
                                      f'signal {name!r}')

    def is_reply_address(self, reply_to: str) -> bool:
        """Whether ``reply_to`` is the bus queue of a caller on this prefix, where answers may go."""
        return self._reply_form.fullmatch(reply_to) is not None

    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        """Straight to the caller's queue through the default exchange, as 1.x peers answer; never
        to a queue of another form (see ``is_reply_address``)."""
        if not self.is_reply_address(reply_to):
            self._refused_replies.warning(self.log, reply_to,
                                          '%s: not answering to %s: not the reply queue of a bus on %r',
                                          self._link.name, shown(reply_to), self.prefix)
            return
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
        """Hand a delivery to the engine; acknowledge it once the backlog has room (backpressure),
        with the others taken within a few milliseconds (``acks.py``)."""
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
                             shown(message.routing_key or ''), type(exc).__name__, exc)
        finally:
            acks = self._acks
            if acks is None or acks.channel is not message.channel:  # the first on this channel
                if acks is not None:
                    acks.close()
                acks = self._acks = BatchedAcks(message.channel, self.prefetch // 4)
            acks.take(message.delivery_tag or 0)

    def _answer(self, message: DeliveredMessage) -> Envelope | None:
        """An RPC answer; a 1.x peer names its request only in ``correlation_id``."""
        props = message.header.properties
        headers = received_headers(props)
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
        headers = received_headers(props, message_id=False)
        if props.reply_to and props.correlation_id:  # a request, maybe from a 1.x peer without the headers
            headers.setdefault(REQUEST_ID, props.correlation_id)
            headers.setdefault(REPLY_TO, props.reply_to)
        for reply_to in {headers.get(REPLY_TO), props.reply_to} - {None, ''}:
            if not self.is_reply_address(str(reply_to)):
                sender = key[len(name) + 1:]
                self._refused_replies.warning(
                    self.log, f'{name}.{sender}', '%s: dropped a request of signal %r from %s: its reply address '
                    '%s is not the reply queue of a bus on %r',
                    self._link.name, name, shown(sender), shown(str(reply_to)), self.prefix)
                return None
        return name, key[len(name) + 1:], Envelope(message.body, headers or None)

    def _name_in(self, key: str) -> str:
        """The signal of an unlabelled routing key ``{name}.{sender}``: the longest subscribed name
        it starts with (names may hold dots), else its first word."""
        names = [name for name in self._names if key.startswith(name + '.')]
        return max(names, key=len) if names else key.partition('.')[0]

    def _dropped(self, key: str, label: str | None, why: str) -> None:
        self.log.warning('%s: dropped a message routed %s labelled %s: %s', self._link.name, shown(key),
                         shown(label or ''), why)

    async def ping(self) -> None:
        """A passive declaration of ``amq.direct`` on the publishing channel; and, once something is
        subscribed, the bus queue must be consumed now (not resubscribing)."""
        channel = await self._publisher.channel(PING_PATIENCE)
        await passive_declare(channel)
        if self._watcher is not None and self._channel is None:
            raise ConnectionFailed(f'{self._link.name}: not subscribed (reconnecting to RabbitMQ at '
                                   f'{self._link.safe_dsn})')

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        self._ready.clear()
        if self._acks is not None:
            self._acks.close()
        await self._publisher.close()
        await self._link.close()
