"""``microagent.tools.nats``: the NATS backend (``microagent.backends.nats``) beside the 1.x paths."""
from microagent.backends.nats import NATSBroker, NATSBusTransport, NATSQueueTransport, NATSSignalBus

__all__ = ['NATSBroker', 'NATSBusTransport', 'NATSQueueTransport', 'NATSSignalBus']
