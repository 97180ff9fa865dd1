"""Bus and broker stand-ins for unit tests of an agent's own logic (no delivery at all).

    agent = UserAgent(bus=BusMock(), broker=BrokerMock())
    await agent.some_method()
    agent.bus.user_created.send.assert_called()
    agent.broker.mailer.send.assert_awaited_with({'to': 'a@b.c'})

They are the real engines over a private memory hub (so nothing is stubbed beside what a test
asserts on): ``bus.x`` / ``broker.x`` (and ``bus[x]`` / ``broker[x]``) are mocks recording sends,
and binding receivers and consumers is recorded, not run.
"""
from __future__ import annotations

from typing import Any
from unittest.mock import AsyncMock

from microagent.backends.memory import MemoryBusTransport, MemoryHub, MemoryQueueTransport
from microagent.broker import AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.message import Envelope
from microagent.queue import Queue


class BoundSignalMock:
    def __init__(self) -> None:
        self.send = AsyncMock()
        self.call = AsyncMock()
        self.waiter = AsyncMock()


class BoundQueueMock:
    def __init__(self) -> None:
        self.send = AsyncMock()
        self.send_many = AsyncMock()
        self.length = AsyncMock(return_value=0)
        self.declare = AsyncMock()
        self.dead_letters = AsyncMock(return_value=[])
        self.dead_letter_count = AsyncMock(return_value=0)
        self.requeue_dead_letters = AsyncMock(return_value=0)


class BusMock(AbstractSignalBus):
    """``bus.x`` and ``bus[x]`` are the same ``BoundSignalMock`` with AsyncMock methods."""

    def __init__(self) -> None:
        super().__init__(MemoryBusTransport(MemoryHub()), dsn='mock://')
        self._bound: dict[str, BoundSignalMock] = {}
        self.bind_receiver = AsyncMock()  # type: ignore[method-assign]
        self.unbind_receivers = AsyncMock()  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Any:
        if name.startswith('_'):
            raise AttributeError(name)
        return self._bound.setdefault(name, BoundSignalMock())

    def __getitem__(self, signal: Any) -> Any:
        return self.__getattr__(signal if isinstance(signal, str) else signal.name)


class _MockQueueTransport(MemoryQueueTransport):
    """As a mock has no server, every queue declared for an exchange counts as bound to it."""

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> int:
        for queue in Queue.get_all().values():
            if queue.routes(exchange, routing_key):
                await self.declare(queue)
        return await super().publish(exchange, routing_key, envelope)


class BrokerMock(AbstractQueueBroker):
    """``broker.x`` and ``broker[x]`` are the same ``BoundQueueMock`` with AsyncMock methods;
    ``publish`` still validates the payload."""

    def __init__(self) -> None:
        super().__init__(_MockQueueTransport(MemoryHub()), dsn='mock://')
        self._bound: dict[str, BoundQueueMock] = {}
        self.bind_consumer = AsyncMock()  # type: ignore[method-assign]
        self.stop_consumers = AsyncMock()  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Any:
        if name.startswith('_'):
            raise AttributeError(name)
        return self._bound.setdefault(name, BoundQueueMock())

    def __getitem__(self, queue: Any) -> Any:
        return self.__getattr__(queue if isinstance(queue, str) else queue.name)
