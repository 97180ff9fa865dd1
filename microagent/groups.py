"""Signal groups: a grouped receiver shares each signal with the other members of its group (the
replicas of one service), so one of them handles it, at least once, durably.

A grouped receiver is, underneath, a consumer of its group's *store*: a durable queue per
(signal, group) that the backend's server fills on every publish of the signal (a Redis stream read
by a consumer group, a RabbitMQ queue bound to the bus exchange, a JetStream durable consumer, the
memory hub). A backend that has groups gives its bus transport a ``groups()`` method returning a
``BrokerTransport`` over ``GroupQueue``s; the delivery policy (concurrency, acks after the handler,
retries with backoff, dead letters, graceful stop) is the broker engine's, reused here unchanged.

What a group transport adds to the ``BrokerTransport`` contract:

* ``declare(store)`` joins the group: creates its store where needed (from ``store.start``: the
  signals sent from now on, or all the signal retains) and makes every later ``publish`` of
  ``store.signal.name`` on any bus of that server reach it, within ``store.options`` retention.
* ``fetch`` fills ``Delivery.context[SENDER]`` with the sender the signal was published by.
* A member that dies holding signals loses none: another member gets them once
  ``options.visibility_timeout`` has passed (a live member keeps its own, however slow).
* ``put`` and ``publish`` are not used: signals reach a store only through the bus's publish.
"""
from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from microagent.broker import AbstractQueueBroker
from microagent.errors import DeclarationError, InvalidArgument, InvalidPayload, UsageError
from microagent.handlers import Consumer, ConsumerSpec, Grouping, Receiver
from microagent.logs import shown
from microagent.message import REPLY_TO, REQUEST_ID, current_var
from microagent.queue import Queue
from microagent.signal import Signal
from microagent.transport import BrokerTransport, Delivery

if TYPE_CHECKING:
    from microagent.handlers import GroupStart

__all__ = ['SENDER', 'GroupOptions', 'GroupQueue', 'SignalGroups', 'store_name']

#: the key of ``Delivery.context`` where a group transport puts the signal's sender
SENDER = 'sender'
DAY = 86400.0


@dataclass(frozen=True)
class GroupOptions:
    """A bus's settings for the stores of its groups.

    ``max_length`` and ``max_age`` bound what a store keeps for a group while no member reads it
    (the oldest signals go first); ``visibility_timeout`` is how long a member may hold a signal
    unsettled before another member may take it, should the first have died (live members extend
    it for what they hold, so a slow handler is not handled twice)."""

    max_length: int = 100_000
    max_age: float = 7 * DAY
    visibility_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not (isinstance(self.max_length, int) and self.max_length >= 1):
            raise UsageError(f'group max_length must be an int >= 1, got {self.max_length!r}')
        for name in ('max_age', 'visibility_timeout'):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < float('inf')):
                raise UsageError(f'group {name} must be a finite number of seconds > 0, got {value!r}')


def store_name(signal: str, group: str) -> str:
    """``signal@group``: how tools name a group's store (``@`` is in neither name)."""
    return f'{signal}@{group}'


def split_store_name(name: str) -> tuple[str, str]:
    """``(signal, group)`` of a store name; an InvalidArgument (a ValueError) names one that is not."""
    signal, at, group = name.partition('@')
    if not (at and signal and group):
        raise InvalidArgument(f'{name!r} is not a group store name (signal@group)')
    return signal, group


class GroupQueue(Queue[Any]):
    """The store of one group of one signal, as a group transport sees it: a queue that is not
    declared by anyone (no registry, no exchange) and is filled by the signal's publishes."""

    signal: Signal[Any, Any]
    group: str
    start: GroupStart
    options: GroupOptions

    def __init__(self, signal: Signal[Any, Any], group: str, *, start: GroupStart = 'now',
                 options: GroupOptions = GroupOptions()) -> None:
        self.signal = signal
        self.group = group
        self.start = start
        self.options = options
        self.name = store_name(signal.name, group)
        self.model = signal.model
        self.codec = signal.codec
        self.exchange = None
        self.exchange_declaration = None
        self.topics = ()
        self.queue_type = None
        self.delivery_limit = None

    def __repr__(self) -> str:
        return f'<GroupQueue {self.name}>'


class Answering(Protocol):
    """What a grouped receiver asks of its bus for a request: may it answer there, and the answer."""

    def replies_to(self, reply_to: str) -> bool: ...

    async def answer_for_group(self, receiver: Receiver, request_id: str, reply_to: str, result: Any) -> None: ...


class GroupConsumer(Consumer):
    """A grouped receiver as the broker engine drives it: decodes with the signal's model, calls the
    receiver with the sender, and answers an RPC request (one answer per group)."""

    kind = 'receiver'
    screens = True  # a request's reply address is checked before the handler may run

    def __init__(self, receiver: Receiver, grouping: Grouping, store: GroupQueue, bus: Answering) -> None:
        options = {'concurrency': receiver.concurrency, 'max_retries': grouping.max_retries,
                   'retry_delay': grouping.retry_delay}
        spec = ConsumerSpec(queue=store, timeout=receiver.timeout, style=receiver.style, options=options)
        super().__init__(receiver.agent, receiver.handler, spec)
        self.receiver = receiver
        self.key = receiver.name
        self.target = receiver.signal.name
        self._bus = bus
        style = receiver.style
        #: the handler takes the payload alone: called directly unless the signal is a request
        self._direct = not (style.legacy or style.message or style.keywords & {'sender', 'signal'})

    def __repr__(self) -> str:
        return f'<GroupConsumer {self.key} of {self.queue.name}>'

    def screen(self, delivery: Any) -> None:
        """A request whose reply address is not of the bus's own RPC form is never handled: the
        receiver would act, and answer, for whoever wrote that address (a queue, a stream's API)."""
        reply_to = delivery.header(REPLY_TO)
        if reply_to and delivery.header(REQUEST_ID) and not self._bus.replies_to(reply_to):
            raise InvalidPayload(f'signal {self.receiver.signal.name!r}', [
                f'reply-to {shown(reply_to)} is not the RPC answer address of a bus of this fleet'])

    def decode(self, data: bytes) -> tuple[Any, Any]:
        return self.receiver.signal.codec.decode(data), None

    def __call__(self, decoded: tuple[Any, Any], context: Mapping[str, Any]) -> Awaitable[Any]:
        if self._direct and not _is_request(current_var.get()):
            # the common typed call, as ``Consumer`` makes it: the engine's watchdog times it
            return self.receiver.handler(decoded[0]) if self.receiver.style.positional else self.receiver.handler()
        sender = context.get(SENDER)
        return self._receive(decoded[0], sender if isinstance(sender, str) else '')

    async def _receive(self, payload: Any, sender: str) -> Any:
        result = await self.receiver(payload, sender)
        delivery = current_var.get()
        if isinstance(delivery, Delivery):
            request_id, reply_to = delivery.header(REQUEST_ID), delivery.header(REPLY_TO)
            if request_id and reply_to:
                await self._bus.answer_for_group(self.receiver, request_id, reply_to, result)
        return result


def _is_request(delivery: Any) -> bool:
    return isinstance(delivery, Delivery) and bool(delivery.header(REQUEST_ID) and delivery.header(REPLY_TO))


class SignalGroups(AbstractQueueBroker):
    """The bus's engine for its grouped receivers: a broker engine over the group transport, whose
    queues are group stores (``signal@group``). ``bus.groups`` is one: its dead-letter, depth and
    requeue methods take store names."""

    def __init__(self, transport: BrokerTransport[Any], options: GroupOptions, bus: Answering, *,
                 dsn: str, log: Any, max_message_size: int) -> None:
        super().__init__(transport, dsn=dsn, log=log, max_message_size=max_message_size)
        self.options = options
        self._bus = bus
        self.consumers: dict[Receiver, GroupConsumer] = {}

    def __repr__(self) -> str:
        return f'<SignalGroups of {self.dsn or self.backend}>'

    async def bind(self, receiver: Receiver, grouping: Grouping) -> None:
        """Join the receiver's group and start handling its share of the signal."""
        store = GroupQueue(receiver.signal, grouping.name, start=grouping.start, options=self.options)
        running = self._running.get(store.name)
        if running is not None:
            raise DeclarationError(f'{receiver.name} and {running.consumer.key} both receive signal '
                                   f'{receiver.signal.name!r} in group {grouping.name!r} in one process: '
                                   'give one of them another group')
        consumer = self.consumers[receiver] = GroupConsumer(receiver, grouping, store, self._bus)
        await self.bind_consumer(consumer)

    async def unbind(self, receivers: list[Receiver], grace: float) -> None:
        consumers = [c for r in receivers if (c := self.consumers.pop(r, None)) is not None]
        if consumers:
            await self.stop_consumers(consumers, grace)
