"""``microagent.tools.amqp``, the 1.x path of the RabbitMQ backend (``microagent.backends.amqp``)."""
from microagent.backends.amqp import AMQPBroker, AMQPBusTransport, AMQPMeta, AMQPQueueTransport, AMQPSignalBus

__all__ = ['AMQPBroker', 'AMQPBusTransport', 'AMQPMeta', 'AMQPQueueTransport', 'AMQPSignalBus']
