"""The backend name the engines give middlewares and traces (``messaging.system``) is the backend
package's, whichever of its modules defines the transport."""
from __future__ import annotations

import microagent.backends as registry
from microagent.backends.amqp import AMQPBusTransport, AMQPQueueTransport
from microagent.backends.amqp.headers import BACKEND_HEADERS as AMQP_HEADERS
from microagent.backends.amqp.headers import DEATH_HEADER
from microagent.backends.memory import MemoryBusTransport, MemoryHub, MemoryQueueTransport
from microagent.backends.nats import NATSBusTransport, NATSQueueTransport
from microagent.backends.nats.headers import OWN_HEADERS as NATS_HEADERS
from microagent.backends.nats.headers import SERVER_PREFIX
from microagent.backends.redis import RedisBusTransport, RedisQueueTransport
from microagent.middleware import backend_name


def test_a_transport_is_named_by_its_backend_package() -> None:
    assert backend_name(AMQPQueueTransport('amqp://guest:guest@127.0.0.1/')) == 'amqp'
    assert backend_name(AMQPBusTransport('amqp://guest:guest@127.0.0.1/')) == 'amqp'
    assert backend_name(NATSQueueTransport('nats://127.0.0.1:4222')) == 'nats'
    assert backend_name(NATSBusTransport('nats://127.0.0.1:4222')) == 'nats'
    assert backend_name(MemoryQueueTransport(MemoryHub())) == 'memory'
    assert backend_name(MemoryBusTransport(MemoryHub())) == 'memory'
    assert backend_name(RedisBusTransport('redis://127.0.0.1')) == 'redis'
    assert backend_name(RedisQueueTransport('redis://127.0.0.1')) == 'redis'


def test_a_transport_outside_the_package_is_named_by_its_module() -> None:
    class Transport:
        pass

    Transport.__module__ = 'shop.kafka_transport'
    assert backend_name(Transport()) == 'kafka'




def test_the_registry_reserves_the_header_names_each_backend_writes() -> None:
    written = AMQP_HEADERS | {DEATH_HEADER, 'x-first-death-queue'} | NATS_HEADERS | {SERVER_PREFIX + 'msg-id'}
    assert [name for name in written if registry.reserving_backend(name.lower()) is None] == []
    assert registry.reserving_backend('x-due') is registry.backend_named('nats')
    assert registry.reserving_backend('x-death') is registry.backend_named('amqp')
