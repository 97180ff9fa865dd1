"""The 1.x dotted paths of the backends (``microagent.tools.redis.RedisBroker`` ...): thin faces over
``microagent.backends``, kept so 1.x settings and imports work unchanged."""
