"""Bus and broker stand-ins for unit tests of an agent's own logic (no delivery at all).

    agent = UserAgent(bus=BusMock(), broker=BrokerMock())
    await agent.some_method()
    agent.bus.user_created.send.assert_called()
    agent.broker.mailer.send.assert_awaited_with({'to': 'a@b.c'})
"""
from __future__ import annotations

from typing import Any
from unittest.mock import AsyncMock

from ..broker import AbstractQueueBroker
from ..bus import AbstractSignalBus
from ..queue import Queue


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
        super().__init__('mock://')
        self._bound: dict[str, BoundSignalMock] = {}
        self.publish = AsyncMock()  # type: ignore[method-assign]
        self.subscribe = AsyncMock()  # type: ignore[method-assign]
        self.bind_receiver = AsyncMock()  # type: ignore[method-assign]
        self.unbind_receivers = AsyncMock()  # type: ignore[method-assign]

    async def publish(self, channel: str, data: bytes) -> None: ...  # replaced per instance

    async def subscribe(self, pattern: str) -> None: ...  # replaced per instance

    def __getattr__(self, name: str) -> Any:
        if name.startswith('_'):
            raise AttributeError(name)
        return self._bound.setdefault(name, BoundSignalMock())

    def __getitem__(self, signal: Any) -> Any:
        return self.__getattr__(signal.name)


class BrokerMock(AbstractQueueBroker):
    """``broker.x`` and ``broker[x]`` are the same ``BoundQueueMock`` with AsyncMock methods."""

    def __init__(self) -> None:
        super().__init__('mock://')
        self._bound: dict[str, BoundQueueMock] = {}
        self.bind_consumer = AsyncMock()  # type: ignore[method-assign]
        self.stop_consumers = AsyncMock()  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Any:
        if name.startswith('_'):
            raise AttributeError(name)
        return self._bound.setdefault(name, BoundQueueMock())

    def __getitem__(self, queue: Any) -> Any:
        return self.__getattr__(queue.name)

    async def put(self, queue: Any, messages: list[bytes], delay: float = 0.0) -> None: ...

    async def bindings(self, exchange: str) -> dict[str, tuple[str, ...]]:
        """A mock has no server: every queue declared for the exchange counts as bound."""
        return {q.name: q.topics for q in Queue.get_all().values() if q.exchange == exchange}

    async def route(self, exchange: str, routing_key: str, data: bytes, targets: list[str]) -> None: ...

    async def fetch(self, queue: Any, count: int, timeout: float) -> list[Any]:
        return []

    async def ack(self, queue: Any, delivery: Any) -> None: ...

    async def retry(self, queue: Any, delivery: Any, delay: float, reason: str) -> None: ...

    async def dead_letter(self, queue: Any, delivery: Any, reason: str) -> None: ...

    async def release(self, queue: Any, deliveries: list[Any]) -> None: ...

    async def queue_length(self, name: str) -> int:
        return 0

    async def dead_letters(self, name: str, limit: int = 100) -> list[Any]:
        return []

    async def dead_letter_count(self, name: str) -> int:
        return 0

    async def requeue_dead_letters(self, name: str) -> int:
        return 0
