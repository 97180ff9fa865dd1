"""The backends the conformance suite runs on. Each entry opens a fresh, isolated bus and broker
(own DSN, prefix or database) and cleans up what the test created."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from microagent.backends.memory import MemoryBroker, MemorySignalBus
from microagent.broker import AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.queue import QueueType
from microagent.signing import unwrapped
from microagent.testing import TestGroup


@dataclass
class Backend:
    """Factories of buses and brokers that see each other (same server, same namespace)."""

    name: str
    make_bus: Callable[..., AbstractSignalBus]
    make_broker: Callable[..., AbstractQueueBroker]
    dsn: str = ''
    opened: list[Any] = field(default_factory=list)
    groups: list[TestGroup] = field(default_factory=list)

    @property
    def engine(self) -> str:
        """The server behind the backend: ``amqp-quorum`` is RabbitMQ (``amqp``) with quorum queues."""
        return self.name.partition('-')[0]

    def bus(self, **options: Any) -> AbstractSignalBus:
        bus = self.make_bus(**options)
        self.opened.append(bus)
        return bus

    def broker(self, **options: Any) -> AbstractQueueBroker:
        broker = self.make_broker(**options)
        self.opened.append(broker)
        return broker

    def group(self, *agents: type[Any]) -> TestGroup:
        """A ``TestGroup`` on this backend's server, by its DSN (the registry picks the classes);
        what its transports declared is cleaned up with the rest."""
        group = TestGroup(*agents, dsn=self.dsn)
        self.groups.append(group)
        return group

    def declared_by(self) -> list[Any]:
        """The brokers and buses opened here, and the transports of the groups: what declared things."""
        return [*self.opened, *(t for group in self.groups for t in group.transports)]

    async def close(self) -> None:
        for item in self.opened:
            await item.close()


@asynccontextmanager
async def memory_backend() -> AsyncIterator[Backend]:
    dsn = f'memory://{uuid.uuid4().hex}'
    backend = Backend('memory', lambda **o: MemorySignalBus(dsn, **o), lambda **o: MemoryBroker(dsn, **o), dsn)
    try:
        yield backend
    finally:
        await backend.close()


BACKENDS: dict[str, Callable[[], AbstractAsyncContextManager[Backend]]] = {
    'memory': memory_backend,
}


REDIS_TEST_DSN = 'redis://127.0.0.1:6379/9'


@asynccontextmanager
async def redis_backend(cluster: bool = False) -> AsyncIterator[Backend]:
    """Redis db 9, or with ``cluster`` the session's Redis Cluster (the ``backend`` fixture starts
    it); a unique signal prefix per test, and every key of the queues the test declared is deleted
    afterwards, on every master of a cluster (other runs may share the db, so no FLUSHDB)."""
    from microagent.backends.redis import RedisBroker, RedisSignalBus
    from microagent.backends.redis.keys import exchange_key
    from microagent.exchange import Exchange
    from microagent.queue import Queue
    from tests.services import REDIS_HOST, REDIS_PORT, require_service

    if cluster:
        dsn = cluster_dsn()
    else:
        require_service('Redis', REDIS_HOST, REDIS_PORT)
        dsn = REDIS_TEST_DSN
    prefix = f'T{uuid.uuid4().hex[:12]}'
    before = set(Queue.get_all())
    exchanges_before = set(Exchange.get_all())
    backend = Backend('redis-cluster' if cluster else 'redis', lambda **o: RedisSignalBus(dsn, prefix=prefix, **o),
                      lambda **o: RedisBroker(dsn, **o), dsn)
    try:
        yield backend
    finally:
        await backend.close()
        client = redis_admin(cluster)
        try:
            await drop_queues(client, set(Queue.get_all()) - before, cluster)
            for name in set(Exchange.get_all()) - exchanges_before:
                await client.delete(exchange_key(name))
            await drop_groups(client, prefix)
        finally:
            await client.aclose()


def redis_admin(cluster: bool) -> Any:
    """A plain redis-py client on the server of a Redis backend: db 9, or the session's cluster."""
    if cluster:
        return cluster_client()
    from redis.asyncio import Redis

    return Redis.from_url(REDIS_TEST_DSN)


async def drop_queues(client: Any, names: Iterable[str], cluster: bool) -> None:
    """Delete every key of each queue: its list and the keys named after it (``backends/redis/keys.py``)."""
    from microagent.backends.redis.keys import base_of

    for name in names:
        await client.delete(name)
        async for key in client.scan_iter(match=f'{base_of(name, cluster)}:*', count=1000):
            await client.delete(key)


async def drop_groups(client: Any, prefix: str) -> None:
    """Delete the signal groups of a bus prefix: its registry, its streams and the keys of each group
    (``backends/redis/keys.py``: on a cluster they start with the stream's hash tag)."""
    from microagent.backends.redis.keys import group_registry, group_stream

    await client.delete(group_registry(prefix))
    streams = group_stream(prefix, '')
    for pattern in (f'{streams}*', f'{{{streams}*'):
        async for key in client.scan_iter(match=pattern, count=1000):
            await client.delete(key)


def cluster_dsn() -> str:
    from tests.redis_cluster_support import current

    return current().dsn


def cluster_client() -> Any:
    """A plain redis-py cluster client on the session's cluster (the 1.x agent, or a checker)."""
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    from tests.redis_cluster_support import current

    return RedisCluster(startup_nodes=[ClusterNode('127.0.0.1', port) for port in current().ports[:3]])


BACKENDS['redis'] = redis_backend
BACKENDS['redis-cluster'] = partial(redis_backend, cluster=True)


@asynccontextmanager
async def amqp_backend(queue_type: QueueType = 'classic') -> AsyncIterator[Backend]:
    """RabbitMQ; a unique exchange (bus prefix) per test, and every queue and exchange the test's
    brokers declared is deleted afterwards (and the stores of the buses' signal groups).
    ``queue_type='quorum'``: the brokers and the buses' groups declare quorum queues (the
    ``amqp-quorum`` backend)."""
    from microagent.backends.amqp import AMQPBroker, AMQPSignalBus
    from tests.amqp_support import AMQP_DSN, delete_declared, require_rabbitmq

    require_rabbitmq()
    prefix = f'T{uuid.uuid4().hex[:12]}'
    name = 'amqp' if queue_type == 'classic' else f'amqp-{queue_type}'
    backend = Backend(name, lambda **o: AMQPSignalBus(AMQP_DSN, prefix=prefix, **{'queue_type': queue_type, **o}),
                      lambda **o: AMQPBroker(AMQP_DSN, **{'queue_type': queue_type, **o}), AMQP_DSN)
    try:
        yield backend
    finally:
        await backend.close()
        await delete_declared(backend.declared_by(), [prefix])


BACKENDS['amqp'] = amqp_backend
BACKENDS['amqp-quorum'] = partial(amqp_backend, 'quorum')


@asynccontextmanager
async def nats_backend() -> AsyncIterator[Backend]:
    """NATS: a unique subject prefix per test, and every stream the test's brokers declared is
    deleted afterwards (with its consumers), and the test's exchange bindings."""
    from microagent.backends.nats import NATSBroker, NATSSignalBus
    from tests.services import NATS_DSN, require_nats

    require_nats()
    prefix = f'T{uuid.uuid4().hex[:12]}'
    backend = Backend('nats', lambda **o: NATSSignalBus(NATS_DSN, prefix=prefix, **o),
                      lambda **o: NATSBroker(NATS_DSN, **o), NATS_DSN)
    try:
        yield backend
    finally:
        await backend.close()
        await delete_nats_streams(backend.declared_by())


async def delete_nats_streams(opened: list[Any]) -> None:
    """Delete the streams the brokers (or their transports) in ``opened`` declared, and their exchange
    bindings; and the signal groups' streams (with their consumers) of the buses' prefixes."""
    import nats

    from microagent.backends.nats import NATSBroker, NATSQueueTransport, NATSSignalBus
    from microagent.backends.nats.groupindex import group_streams
    from microagent.backends.nats.layout import BINDINGS_STREAM
    from tests.services import NATS_DSN

    transports = [unwrapped(b.transport) if isinstance(b, NATSBroker) else b for b in opened]
    transports = [t for t in transports if isinstance(t, NATSQueueTransport)]
    streams = {s for t in transports for s in t.created_streams}
    prefixes = {bus.prefix for bus in opened if isinstance(bus, NATSSignalBus)}
    nc = await nats.connect(NATS_DSN)
    try:
        js = nc.jetstream()
        streams |= {s for prefix in prefixes for s in await group_streams(nc, prefix)}
        for stream in streams - {BINDINGS_STREAM}:
            await js.delete_stream(stream)
        for transport in transports:
            for subject in transport.binding_subjects:
                await js.purge_stream(BINDINGS_STREAM, subject=subject)
    finally:
        await nc.close()


BACKENDS['nats'] = nats_backend


async def inject_raw(backend: Backend, broker: AbstractQueueBroker, queue: str, bodies: list[bytes]) -> None:
    """Put ``bodies`` on ``queue`` exactly as given, past every check of microagent: as a 1.x
    agent or a foreign producer would (redis-py RPUSH; aiormq to the default exchange; a
    plain JetStream publish)."""
    if backend.engine == 'redis':
        client = redis_admin(backend.name == 'redis-cluster')
        try:
            await client.rpush(queue, *bodies)
        finally:
            await client.aclose()
    elif backend.engine == 'amqp':
        import aiormq
        from pamqp import commands

        from tests.amqp_support import AMQP_DSN

        connection = await aiormq.connect(AMQP_DSN)
        try:
            channel = await connection.channel()
            for body in bodies:
                await channel.basic_publish(body, exchange='', routing_key=queue,
                                            properties=commands.Basic.Properties(delivery_mode=2))
        finally:
            await connection.close()
    elif backend.engine == 'nats':
        import nats

        from microagent.backends.nats.layout import Layout
        from tests.services import NATS_DSN

        nc = await nats.connect(NATS_DSN)
        try:
            js = nc.jetstream()
            for body in bodies:
                await js.publish(Layout.of(queue).subject, body)
        finally:
            await nc.close()
    else:
        from microagent.backends.memory import MemoryBroker

        assert isinstance(broker, MemoryBroker)
        from microagent.message import Envelope
        from microagent.queue import Queue

        await broker.transport.put(Queue.get(queue), [Envelope(body) for body in bodies])


async def unsettled_after_stop(backend: Backend, queue: str) -> int:
    """How many messages of ``queue`` are still taken and not settled, as the server sees it, once
    its consumers stopped. Redis: the consumers' in-flight lists. RabbitMQ: with no consumer left
    attached, an unacked delivery is back among the ready ones, so the queue must be empty. NATS: the
    consumer's unacknowledged deliveries. Memory holds taken messages only in their deliveries:
    nothing to look at."""
    if backend.engine == 'redis':
        from microagent.backends.redis.keys import base_of

        cluster = backend.name == 'redis-cluster'
        client = redis_admin(cluster)
        try:
            total = 0
            async for key in client.scan_iter(match=f'{base_of(queue, cluster)}:inflight:*', count=1000):
                total += int(await client.llen(key))
            return total
        finally:
            await client.aclose()
    if backend.engine == 'amqp':
        import aiormq

        from tests.amqp_support import AMQP_DSN

        connection = await aiormq.connect(AMQP_DSN)
        try:
            channel = await connection.channel()
            ok = await channel.queue_declare(queue, passive=True)
            assert not ok.consumer_count, f'queue {queue!r} still has {ok.consumer_count} consumers'
            return int(ok.message_count or 0)
        finally:
            await connection.close()
    if backend.engine == 'nats':
        return await nats_taken(queue)
    return 0


async def nats_taken(queue: str) -> int:
    """NATS: messages the queue's consumer handed out and nobody acknowledged (nor NAKed)."""
    import nats
    from nats.js.errors import NotFoundError

    from microagent.backends.nats.layout import CONSUMER, Layout
    from tests.services import NATS_DSN

    client = await nats.connect(NATS_DSN)
    try:
        try:
            info = await client.jetstream().consumer_info(Layout.of(queue).stream, CONSUMER)
        except NotFoundError:
            return 0
        return int(info.num_ack_pending)
    finally:
        await client.close()
