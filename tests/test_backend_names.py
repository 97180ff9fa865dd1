"""The backend name the engines give middlewares and traces (``messaging.system``) is the backend
package's, whichever of its modules defines the transport."""
from __future__ import annotations

from microagent.backends.amqp import AMQPBusTransport, AMQPQueueTransport
from microagent.backends.memory import MemoryBusTransport, MemoryHub, MemoryQueueTransport
from microagent.backends.nats import NATSBusTransport, NATSQueueTransport
from microagent.middleware import backend_name


def test_a_transport_is_named_by_its_backend_package() -> None:
    assert backend_name(AMQPQueueTransport('amqp://guest:guest@127.0.0.1/')) == 'amqp'
    assert backend_name(AMQPBusTransport('amqp://guest:guest@127.0.0.1/')) == 'amqp'
    assert backend_name(NATSQueueTransport('nats://127.0.0.1:4222')) == 'nats'
    assert backend_name(NATSBusTransport('nats://127.0.0.1:4222')) == 'nats'
    assert backend_name(MemoryQueueTransport(MemoryHub())) == 'memory'
    assert backend_name(MemoryBusTransport(MemoryHub())) == 'memory'


def test_a_transport_outside_the_package_is_named_by_its_module() -> None:
    class Transport:
        pass

    Transport.__module__ = 'shop.kafka_transport'
    assert backend_name(Transport()) == 'kafka'
