"""The embedded in-memory backend: one process, no server, the same semantics as the others.

Each bus and broker is isolated, so two tests (or two users of one process) never see each other's
queues and signals. Instances meet only on a hub given explicitly: the same ``hub=MemoryHub()``
object, or a DSN naming a hub (``memory://demo``), the form configuration files can write, so a
group of agents run by ``marun --single-process`` can talk in a single event loop.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from microagent.broker import DEFAULT_MAX_MESSAGE_SIZE, AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.dsn import hide_password
from microagent.errors import QueueNotFound
from microagent.groups import SENDER, GroupOptions, GroupQueue
from microagent.message import GROUP_SENDER, Envelope
from microagent.queue import Queue, topics_match
from microagent.ratelimit import LocalLimiter
from microagent.signing import SigningKey
from microagent.transport import DeadLetter, Deliver, DeliverReply, Delivery, QueueDepth, SelectDeadLetter


class _BusHub:
    def __init__(self) -> None:
        self.subscribers: dict[str, list[MemoryBusTransport]] = {}  # signal name -> transports
        self.addresses: dict[str, MemoryBusTransport] = {}  # reply_to -> transport
        self.groups: dict[str, dict[str, int]] = {}  # signal name -> its group stores -> their max length
        self.retained: dict[str, deque[Envelope]] = {}  # signal name -> what it sent since its first group


class _Message:
    """A stored message: the envelope, which delivery is next, whether it came back unsettled, its
    priority level (0 but on a queue declared with ``priorities``)."""

    __slots__ = ('attempt', 'envelope', 'priority', 'redelivered')

    def __init__(self, envelope: Envelope, attempt: int = 1, redelivered: bool = False, priority: int = 0) -> None:
        self.envelope = envelope
        self.attempt = attempt
        self.redelivered = redelivered
        self.priority = priority


@dataclass(frozen=True)
class _DeadLetter(DeadLetter):
    """A dead letter that remembers its message's priority level, for a requeue."""

    priority: int = 0


def _insert(queue: deque[_Message], message: _Message, front: bool) -> None:
    """Put ``message`` at the tail (or with ``front`` the head) of its level: a queue is kept in
    order of priority, highest first, so ``popleft`` takes the highest level, oldest first."""
    level = message.priority
    if front:
        i = 0
        while i < len(queue) and queue[i].priority > level:
            i += 1
    else:
        i = len(queue)
        while i > 0 and queue[i - 1].priority < level:
            i -= 1
    queue.insert(i, message)


class _BrokerHub:
    def __init__(self) -> None:
        self.queues: dict[str, deque[_Message]] = {}
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.dead: dict[str, list[DeadLetter]] = {}
        self.bindings: dict[str, dict[str, tuple[str, ...]]] = {}  # exchange -> queue -> topics
        self.delayed: Counter[str] = Counter()  # retries and delayed sends not yet due, by queue
        self.taken: Counter[str] = Counter()  # fetched and not settled yet, by queue
        self.turns: Counter[str] = Counter()  # which waiting consumer a message wakes, by queue

    def settled(self, name: str) -> None:
        """One message fetched from ``name`` is no longer in flight."""
        if self.taken[name] > 0:
            self.taken[name] -= 1

    def push(self, name: str, messages: Sequence[_Message], front: bool = False) -> None:
        queue = self.queues.setdefault(name, deque())
        if any(m.priority for m in messages) or (front and queue and queue[0].priority):
            for message in (reversed(messages) if front else messages):
                _insert(queue, message, front)
        elif front:
            queue.extendleft(reversed(messages))
        else:
            queue.extend(messages)  # level 0, the lowest: the tail
        waiters, woken = self.waiters.get(name), 0
        while waiters and woken < len(messages):  # one consumer per message, in turns
            self.turns[name] += 1
            waiter = waiters.pop(self.turns[name] % len(waiters))
            if not waiter.done():
                waiter.set_result(None)
                woken += 1


class MemoryHub:
    """Where memory buses and brokers meet: the subscriptions of the buses, the queues and dead
    letters of the brokers built on it. What happens on one hub is invisible on every other."""

    def __init__(self, name: str = '') -> None:
        self.name = name
        self.bus = _BusHub()
        self.broker = _BrokerHub()
        self.groups = _BrokerHub()  # the stores of signal groups, apart from the broker's queues
        self.limits = LocalLimiter()  # the rate limits of the brokers built on it

    def __repr__(self) -> str:
        return f'<MemoryHub {hide_password(SCHEME + self.name)}>' if self.name else f'<MemoryHub at {id(self):#x}>'

    @classmethod
    def named(cls, name: str) -> MemoryHub:
        """The process-wide hub of that name, created on first use: what ``memory://name`` means."""
        hub = _named_hubs.get(name)
        if hub is None:
            hub = _named_hubs[name] = cls(name)
        return hub

    @classmethod
    def of(cls, dsn: str, hub: MemoryHub | None) -> MemoryHub:
        """The hub of a new bus or broker: ``hub`` if given, else the one its DSN names, else a
        private one (a bare ``memory://`` names none)."""
        if hub is not None:
            return hub
        name = dsn.removeprefix(SCHEME)
        return cls.named(name) if name else cls()


SCHEME = 'memory://'
_named_hubs: dict[str, MemoryHub] = {}


class MemoryBusTransport:
    """In-process pub/sub on a hub: the smallest ``BusTransport``. ``publish`` puts the envelope in
    the inbox of every subscribed transport, whose reader task awaits the engine's callbacks, so
    delivery is asynchronous and backpressured, like a network bus. The reader runs while the inbox
    holds messages and ends when it is empty: an idle bus leaves no task behind."""

    def __init__(self, hub: MemoryHub, log: logging.Logger | None = None) -> None:
        self.hub = hub
        self._hub = hub.bus
        self.reply_to = uuid.uuid4().hex
        self.log = log or logging.getLogger('microagent.bus')
        self._inbox: deque[tuple[str | None, str, Envelope]] = deque()  # (signal, or None for an answer)
        self._deliver: Deliver | None = None
        self._deliver_reply: DeliverReply | None = None
        self._reader: asyncio.Task[None] | None = None

    async def publish(self, name: str, sender: str, envelope: Envelope) -> None:
        for transport in self._hub.subscribers.get(name, ()):
            transport._put((name, sender, envelope))
        if name in self._hub.groups:
            self._to_groups(name, Envelope(envelope.body, {**(envelope.headers or {}), GROUP_SENDER: sender}))

    def _to_groups(self, name: str, envelope: Envelope) -> None:
        """Keep the signal in the store of each of its groups (the oldest dropped past its length)."""
        self._hub.retained[name].append(envelope)
        stores = self.hub.groups
        for store, max_length in self._hub.groups[name].items():
            stores.push(store, [_Message(envelope)])
            queue = stores.queues[store]
            while len(queue) > max_length:
                queue.popleft()

    def groups(self) -> MemoryGroupTransport:
        """The stores of this hub's signal groups."""
        return MemoryGroupTransport(self.hub)

    async def subscribe(self, names: Collection[str], deliver: Deliver) -> None:
        self._deliver = deliver
        for name in names:
            subscribers = self._hub.subscribers.setdefault(name, [])
            if self not in subscribers:
                subscribers.append(self)

    async def receive_replies(self, deliver: DeliverReply) -> None:
        self._deliver_reply = deliver
        self._hub.addresses[self.reply_to] = self

    def is_reply_address(self, reply_to: str) -> bool:
        """Whether ``reply_to`` is the address of a bus on this hub."""
        return reply_to in self._hub.addresses

    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        transport = self._hub.addresses.get(reply_to)
        if transport is not None:  # a caller gone: the answer is dropped, as on a network bus
            transport._put((None, '', envelope))

    def _put(self, item: tuple[str | None, str, Envelope]) -> None:
        self._inbox.append(item)
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        inbox = self._inbox
        try:
            while inbox:
                name, sender, envelope = inbox.popleft()
                try:
                    if name is None:
                        if self._deliver_reply is not None:
                            await self._deliver_reply(envelope)
                    elif self._deliver is not None:
                        await self._deliver(name, sender, envelope)
                except Exception:  # the engine's callbacks do not raise; should one, the reader reads on
                    self.log.exception('Memory bus: delivering a message failed')
        finally:
            self._reader = None

    async def ping(self) -> None:
        """No server to reach: the hub is this process."""

    async def close(self) -> None:
        for subscribers in self._hub.subscribers.values():
            if self in subscribers:
                subscribers.remove(self)
        self._hub.addresses.pop(self.reply_to, None)
        self._inbox.clear()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


class MemorySignalBus(AbstractSignalBus):
    """In-process pub/sub; delivery is asynchronous, like a network bus."""

    transport: MemoryBusTransport

    def __init__(self, dsn: str = SCHEME, prefix: str = 'PUBSUB', log: logging.Logger | None = None, *,
                 hub: MemoryHub | None = None, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 group_options: GroupOptions | None = None, signing_key: SigningKey | None = None) -> None:
        self.hub = MemoryHub.of(dsn, hub)
        super().__init__(MemoryBusTransport(self.hub, log), dsn=dsn, prefix=prefix, log=log,
                         max_message_size=max_message_size, group_options=group_options, signing_key=signing_key)


class MemoryQueueTransport:
    """In-process queues on a hub: the smallest ``BrokerTransport``. Taken messages live only in
    their ``Delivery`` (the process is the server: if it dies, everything goes with it)."""

    fetch_cancel_safe = True
    #: a queue with ``priorities`` is one deque kept in order of level, highest first
    send_options: frozenset[str] = frozenset(('priority',))
    unsettled_fate = 'it is lost with this process'

    def __init__(self, hub: MemoryHub) -> None:
        self.hub = hub
        self._hub = hub.broker
        self._later: dict[asyncio.TimerHandle, tuple[str, list[_Message]]] = {}  # retries and delayed sends

    def _push_later(self, name: str, messages: list[_Message], delay: float) -> None:
        def due() -> None:
            del self._later[handle]
            self._hub.delayed[name] -= len(messages)
            self._hub.push(name, messages)
        handle = asyncio.get_running_loop().call_later(delay, due)
        self._later[handle] = (name, messages)
        self._hub.delayed[name] += len(messages)

    def limiter(self) -> LocalLimiter:
        """Rate limits shared by the brokers of this hub (this process: the hub's server)."""
        return self.hub.limits

    async def declare(self, queue: Queue[Any]) -> None:
        if queue.exchange:
            self._hub.bindings.setdefault(queue.exchange, {})[queue.name] = queue.topics

    async def put(self, queue: Queue[Any], envelopes: Sequence[Envelope], *, delay: float = 0.0,
                  **options: Any) -> None:
        level: int = options.get('priority', 0)
        fresh = [_Message(envelope, priority=level) for envelope in envelopes]
        if delay > 0:
            self._push_later(queue.name, fresh, delay)
        else:
            self._hub.push(queue.name, fresh)

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> int:
        bound = self._hub.bindings.get(exchange, {})
        targets = [name for name, topics in bound.items() if topics_match(topics, routing_key)]
        if not targets:
            raise QueueNotFound(f'No queue is bound to exchange {exchange!r} for key {routing_key!r}')
        for name in targets:
            self._hub.push(name, [_Message(envelope)])
        return len(targets)

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery[_Message]]:
        messages = self._hub.queues.setdefault(queue.name, deque())
        if not messages:
            waiter = asyncio.get_running_loop().create_future()
            waiters = self._hub.waiters.setdefault(queue.name, [])
            waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                return []
            finally:
                if waiter in waiters:
                    waiters.remove(waiter)
        taken = [messages.popleft() for _ in range(min(count, len(messages)))]
        self._hub.taken[queue.name] += len(taken)
        return [Delivery(m.envelope, m, m.attempt, m.redelivered) for m in taken]

    async def ack(self, queue: Queue[Any], delivery: Delivery[_Message]) -> None:
        self._hub.settled(queue.name)  # taken messages live only in their Delivery

    async def retry(self, queue: Queue[Any], delivery: Delivery[_Message], delay: float, reason: str) -> None:
        again = _Message(delivery.envelope, delivery.attempt + 1, priority=delivery.token.priority)
        self._push_later(queue.name, [again], delay)
        self._hub.settled(queue.name)

    async def dead_letter(self, queue: Queue[Any], delivery: Delivery[_Message], reason: str) -> None:
        letter = _DeadLetter(queue.name, delivery.envelope, reason, delivery.attempt, priority=delivery.token.priority)
        self._hub.dead.setdefault(queue.name, []).append(letter)
        self._hub.settled(queue.name)

    async def release(self, queue: Queue[Any], deliveries: Sequence[Delivery[_Message]]) -> None:
        again = [_Message(d.envelope, d.attempt, redelivered=True, priority=d.token.priority) for d in deliveries]
        for _ in deliveries:
            self._hub.settled(queue.name)
        self._hub.push(queue.name, again, front=True)

    async def consume(self, queue: Queue[Any], concurrency: int) -> None:
        pass  # nothing is pushed: the engine fetches

    async def stop_consuming(self, queue: Queue[Any]) -> None:
        pass  # nothing is prefetched beyond what the engine holds

    async def length(self, name: str) -> int:
        return len(self._hub.queues.get(name, ()))

    async def depth(self, name: str) -> QueueDepth:
        """Every figure from the hub: exact, for every transport on it."""
        return QueueDepth(len(self._hub.queues.get(name, ())), self._hub.delayed[name], self._hub.taken[name])

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        return self._hub.dead.get(name, [])[:limit]

    async def dead_letter_count(self, name: str) -> int:
        return len(self._hub.dead.get(name, []))

    async def requeue_dead_letters(self, name: str) -> int:
        letters = self._hub.dead.pop(name, [])
        if letters:
            self._hub.push(name, [_requeued(letter) for letter in letters])
        return len(letters)

    async def remove_dead_letters(self, name: str, select: SelectDeadLetter, *, requeue: bool) -> int:
        letters = self._hub.dead.get(name, [])
        picked = [select(i, letter) for i, letter in enumerate(letters)]
        taken = [letter for letter, pick in zip(letters, picked, strict=True) if pick]
        if taken:
            self._hub.dead[name] = [letter for letter, pick in zip(letters, picked, strict=True) if not pick]
            if requeue:
                self._hub.push(name, [_requeued(letter) for letter in taken])
        return len(taken)

    async def exists(self, name: str) -> bool:
        """Seen on this hub: consumed, sent to, bound to an exchange or dead-lettered."""
        return (name in self._hub.queues or name in self._hub.dead
                or any(name in bound for bound in self._hub.bindings.values())
                or any(queued == name for queued, _ in self._later.values()))

    async def ping(self) -> None:
        """No server to reach: the hub is this process."""

    async def close(self) -> None:
        for handle, (name, messages) in self._later.items():  # retries and delayed sends: early, not lost
            handle.cancel()
            self._hub.delayed[name] -= len(messages)
            self._hub.push(name, messages)
        self._later.clear()


def _requeued(letter: DeadLetter) -> _Message:
    """A dead letter back on its queue as attempt 1, at its level."""
    return _Message(letter.envelope, priority=letter.priority if isinstance(letter, _DeadLetter) else 0)


class MemoryGroupTransport(MemoryQueueTransport):
    """The stores of signal groups on a hub: queues the bus's publish fills, one per (signal, group),
    kept up to the group's ``max_length`` (``max_age`` is not applied: the hub lives only as long
    as the process). A group that starts from ``'first'`` gets what the signal sent since its
    first group joined."""

    def __init__(self, hub: MemoryHub) -> None:
        super().__init__(hub)
        self._hub = hub.groups

    async def declare(self, queue: Queue[Any]) -> None:
        assert isinstance(queue, GroupQueue)
        bus = self.hub.bus
        retained = bus.retained.setdefault(queue.signal.name, deque(maxlen=queue.options.max_length))
        stores = bus.groups.setdefault(queue.signal.name, {})
        if queue.name not in stores:
            stores[queue.name] = queue.options.max_length
            if queue.start == 'first':
                self._hub.push(queue.name, [_Message(envelope) for envelope in retained])

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery[_Message]]:
        deliveries = await super().fetch(queue, count, timeout)
        for delivery in deliveries:
            delivery.context = {SENDER: delivery.header(GROUP_SENDER) or ''}
        return deliveries


class MemoryBroker(AbstractQueueBroker):
    """In-process queues with acks, retries, dead letters and exchange routing."""

    transport: MemoryQueueTransport

    def __init__(self, dsn: str = SCHEME, log: logging.Logger | None = None, *, hub: MemoryHub | None = None,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, signing_key: SigningKey | None = None) -> None:
        self.hub = MemoryHub.of(dsn, hub)
        super().__init__(MemoryQueueTransport(self.hub), dsn=dsn, log=log, max_message_size=max_message_size,
                         signing_key=signing_key)
