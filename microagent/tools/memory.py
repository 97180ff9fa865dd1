"""``microagent.tools.memory``: the embedded backend (``microagent.backends.memory``) at its old path."""
from microagent.backends.memory import (
    MemoryBroker,
    MemoryBusTransport,
    MemoryHub,
    MemoryQueueTransport,
    MemorySignalBus,
)

__all__ = ['MemoryBroker', 'MemoryBusTransport', 'MemoryHub', 'MemoryQueueTransport', 'MemorySignalBus']
