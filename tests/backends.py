"""The backends the conformance suite runs on. Each entry opens a fresh, isolated bus and broker
(own DSN, prefix or database) and cleans up what the test created."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from microagent.broker import AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.tools.memory import MemoryBroker, MemorySignalBus


@dataclass
class Backend:
    """Factories of buses and brokers that see each other (same server, same namespace)."""

    name: str
    make_bus: Callable[[], AbstractSignalBus]
    make_broker: Callable[..., AbstractQueueBroker]
    opened: list[Any] = field(default_factory=list)

    def bus(self) -> AbstractSignalBus:
        bus = self.make_bus()
        self.opened.append(bus)
        return bus

    def broker(self, **options: Any) -> AbstractQueueBroker:
        broker = self.make_broker(**options)
        self.opened.append(broker)
        return broker

    async def close(self) -> None:
        for item in self.opened:
            await item.close()


@asynccontextmanager
async def memory_backend() -> AsyncIterator[Backend]:
    dsn = f'memory://{uuid.uuid4().hex}'
    backend = Backend('memory', lambda: MemorySignalBus(dsn), lambda **o: MemoryBroker(dsn, **o))
    try:
        yield backend
    finally:
        await backend.close()


BACKENDS: dict[str, Callable[[], AbstractAsyncContextManager[Backend]]] = {
    'memory': memory_backend,
}


REDIS_TEST_DSN = 'redis://127.0.0.1:6379/9'


@asynccontextmanager
async def redis_backend() -> AsyncIterator[Backend]:
    """Redis db 9; a unique signal prefix per test, and every key of the queues the test declared
    is deleted afterwards (other runs may share the db, so no FLUSHDB)."""
    from redis.asyncio import Redis

    from microagent.queue import Queue
    from microagent.tools.redis import RedisBroker, RedisSignalBus
    from tests.services import REDIS_HOST, REDIS_PORT, require_service

    require_service('Redis', REDIS_HOST, REDIS_PORT)
    prefix = f'T{uuid.uuid4().hex[:12]}'
    from microagent.exchange import Exchange
    from microagent.tools.redis_scripts import exchange_key

    before = set(Queue.get_all())
    exchanges_before = set(Exchange.get_all())
    backend = Backend('redis', lambda: RedisSignalBus(REDIS_TEST_DSN, prefix=prefix),
                      lambda **o: RedisBroker(REDIS_TEST_DSN, **o))
    try:
        yield backend
    finally:
        await backend.close()
        client = Redis.from_url(REDIS_TEST_DSN)
        try:
            for name in set(Queue.get_all()) - before:
                await client.delete(name)
                async for key in client.scan_iter(match=f'{name}:*', count=1000):
                    await client.delete(key)
            for name in set(Exchange.get_all()) - exchanges_before:
                await client.delete(exchange_key(name))
        finally:
            await client.aclose()


BACKENDS['redis'] = redis_backend


@asynccontextmanager
async def amqp_backend() -> AsyncIterator[Backend]:
    """RabbitMQ; a unique exchange (bus prefix) per test, and every queue and exchange the test's
    brokers declared is deleted afterwards."""
    from microagent.tools.amqp import AMQPBroker, AMQPSignalBus
    from tests.amqp_support import AMQP_DSN, delete_declared, require_rabbitmq

    require_rabbitmq()
    prefix = f'T{uuid.uuid4().hex[:12]}'
    backend = Backend('amqp', lambda: AMQPSignalBus(AMQP_DSN, prefix=prefix),
                      lambda **o: AMQPBroker(AMQP_DSN, **o))
    try:
        yield backend
    finally:
        await backend.close()
        await delete_declared(backend.opened, [prefix])


BACKENDS['amqp'] = amqp_backend
