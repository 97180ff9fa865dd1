"""``microagent.tools.redis``, the 1.x path of the Redis backend (``microagent.backends.redis``)."""
from microagent.backends.redis import RedisBroker, RedisBusTransport, RedisQueueTransport, RedisSignalBus, Wire

__all__ = ['RedisBroker', 'RedisBusTransport', 'RedisQueueTransport', 'RedisSignalBus', 'Wire']
