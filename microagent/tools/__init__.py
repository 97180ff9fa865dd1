"""Backends: one module each (memory, redis, amqp) and mocks for unit tests."""
