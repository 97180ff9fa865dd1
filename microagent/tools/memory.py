"""The embedded in-memory backend: one process, no server, the same semantics as the others.

Each bus and broker is isolated, so two tests (or two users of one process) never see each other's
queues and signals. Instances meet only on a hub given explicitly: the same ``hub=MemoryHub()``
object, or a DSN naming a hub (``memory://demo``), the form configuration files can write, so a
group of agents run by ``marun --single-process`` can talk in a single event loop.
"""
from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from collections import deque
from typing import Any

from ..broker import AbstractQueueBroker, DeadLetter, Delivery
from ..bus import AbstractSignalBus
from ..dsn import hide_password
from ..queue import Queue


class _BusHub:
    def __init__(self) -> None:
        self.subscriptions: list[tuple[re.Pattern[str], MemorySignalBus]] = []


class _Message:
    __slots__ = ('attempt', 'data')

    def __init__(self, data: bytes, attempt: int = 1) -> None:
        self.data = data
        self.attempt = attempt


class _BrokerHub:
    def __init__(self) -> None:
        self.queues: dict[str, deque[_Message]] = {}
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.dead: dict[str, list[DeadLetter]] = {}
        self.bindings: dict[str, dict[str, tuple[str, ...]]] = {}  # exchange -> queue -> topics

    def push(self, name: str, messages: list[_Message], front: bool = False) -> None:
        queue = self.queues.setdefault(name, deque())
        if front:
            queue.extendleft(reversed(messages))
        else:
            queue.extend(messages)
        for waiter in self.waiters.pop(name, []):
            if not waiter.done():
                waiter.set_result(None)


class MemoryHub:
    """Where memory buses and brokers meet: the subscriptions of the buses, the queues and dead
    letters of the brokers built on it. What happens on one hub is invisible on every other."""

    def __init__(self, name: str = '') -> None:
        self.name = name
        self.bus = _BusHub()
        self.broker = _BrokerHub()

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


class MemorySignalBus(AbstractSignalBus):
    """In-process pub/sub; delivery is asynchronous, like a network bus."""

    def __init__(self, dsn: str = SCHEME, prefix: str = 'PUBSUB', log: logging.Logger | None = None, *,
                 hub: MemoryHub | None = None, **options: Any) -> None:
        super().__init__(dsn, prefix, log, **options)
        self.hub = MemoryHub.of(dsn, hub)
        self._hub = self.hub.bus
        self._closed = False

    async def publish(self, channel: str, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        for pattern, bus in list(self._hub.subscriptions):
            if pattern.match(channel):
                loop.call_soon(bus.dispatch, channel, data)

    async def subscribe(self, pattern: str) -> None:
        self._hub.subscriptions.append((re.compile(fnmatch.translate(pattern)), self))

    async def close(self) -> None:
        self._hub.subscriptions = [(p, b) for p, b in self._hub.subscriptions if b is not self]


class MemoryBroker(AbstractQueueBroker):
    """In-process queues with acks, retries, dead letters and exchange routing."""

    fetch_cancel_safe = True

    def __init__(self, dsn: str = SCHEME, log: logging.Logger | None = None, *, hub: MemoryHub | None = None,
                 **options: Any) -> None:
        super().__init__(dsn, log, **options)
        self.hub = MemoryHub.of(dsn, hub)
        self._hub = self.hub.broker
        self._retries: dict[asyncio.TimerHandle, tuple[str, _Message]] = {}
        self._delayed: dict[asyncio.TimerHandle, tuple[str, list[_Message]]] = {}  # sends with a delay

    async def put(self, queue: Queue[Any], messages: list[bytes], delay: float = 0.0) -> None:
        fresh = [_Message(data) for data in messages]
        if delay <= 0:
            self._hub.push(queue.name, fresh)
            return

        def due() -> None:
            del self._delayed[handle]
            self._hub.push(queue.name, fresh)
        handle = asyncio.get_running_loop().call_later(delay, due)
        self._delayed[handle] = (queue.name, fresh)

    async def declare_queue(self, queue: Queue[Any]) -> None:
        if queue.exchange:
            self._hub.bindings.setdefault(queue.exchange, {})[queue.name] = queue.topics

    async def bindings(self, exchange: str) -> dict[str, tuple[str, ...]]:
        return dict(self._hub.bindings.get(exchange, {}))

    async def route(self, exchange: str, routing_key: str, data: bytes, targets: list[str]) -> None:
        for name in targets:
            self._hub.push(name, [_Message(data)])

    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery]:
        messages = self._hub.queues.setdefault(queue.name, deque())
        if not messages:
            waiter = asyncio.get_running_loop().create_future()
            self._hub.waiters.setdefault(queue.name, []).append(waiter)
            try:
                await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                return []
        taken = [messages.popleft() for _ in range(min(count, len(messages)))]
        return [Delivery(data=m.data, attempt=m.attempt, token=m) for m in taken]

    async def ack(self, queue: Queue[Any], delivery: Delivery) -> None:
        pass  # taken messages live only in their Delivery

    async def retry(self, queue: Queue[Any], delivery: Delivery, delay: float, reason: str) -> None:
        message = _Message(delivery.data, delivery.attempt + 1)

        def again() -> None:
            del self._retries[handle]
            self._hub.push(queue.name, [message])
        handle = asyncio.get_running_loop().call_later(delay, again)
        self._retries[handle] = (queue.name, message)

    async def dead_letter(self, queue: Queue[Any], delivery: Delivery, reason: str) -> None:
        self._hub.dead.setdefault(queue.name, []).append(
            DeadLetter(queue.name, delivery.data, reason, delivery.attempt, time.time()))

    async def release(self, queue: Queue[Any], deliveries: list[Delivery]) -> None:
        self._hub.push(queue.name, [_Message(d.data, d.attempt) for d in deliveries], front=True)

    async def queue_length(self, name: str) -> int:
        return len(self._hub.queues.get(name, ()))

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        return self._hub.dead.get(name, [])[:limit]

    async def dead_letter_count(self, name: str) -> int:
        return len(self._hub.dead.get(name, []))

    async def requeue_dead_letters(self, name: str) -> int:
        letters = self._hub.dead.pop(name, [])
        if letters:
            self._hub.push(name, [_Message(letter.body) for letter in letters])
        return len(letters)

    async def close(self) -> None:
        for handle, (name, message) in self._retries.items():  # due retries go back now, not lost
            handle.cancel()
            self._hub.push(name, [message])
        self._retries.clear()
        for handle, (name, messages) in self._delayed.items():  # delayed sends too: early, not lost
            handle.cancel()
            self._hub.push(name, messages)
        self._delayed.clear()
