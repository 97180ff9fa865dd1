"""Backends: one module or package each (memory, redis, amqp, nats)."""
