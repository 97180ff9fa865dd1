"""``microagent.tools.mocks``, the 1.x path of the bus and broker stand-ins (``microagent.testing.mocks``)."""
from microagent.testing.mocks import BoundQueueMock, BoundSignalMock, BrokerMock, BusMock

__all__ = ['BoundQueueMock', 'BoundSignalMock', 'BrokerMock', 'BusMock']
