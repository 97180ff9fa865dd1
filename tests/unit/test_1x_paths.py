"""Every dotted path the 1.9 documentation and 1.x settings name still imports, and names the same
object as the new layout (the old modules are thin faces, never copies)."""
from __future__ import annotations

import importlib

import pytest

PATHS = [
    # the public names of the package (1.9 API reference)
    ('microagent', 'MicroAgent'), ('microagent', 'receiver'), ('microagent', 'consumer'),
    ('microagent', 'periodic'), ('microagent', 'cron'), ('microagent', 'on'), ('microagent', 'Signal'),
    ('microagent', 'Queue'), ('microagent', 'load_stuff'), ('microagent', 'load_signals'),
    ('microagent', 'load_queues'), ('microagent', 'configure'),
    # modules the reference names in signatures
    ('microagent.agent', 'MicroAgent'), ('microagent.bus', 'AbstractSignalBus'),
    ('microagent.broker', 'AbstractQueueBroker'), ('microagent.signal', 'Signal'), ('microagent.queue', 'Queue'),
    # backends as 1.x settings and scripts name them
    ('microagent.tools.redis', 'RedisSignalBus'), ('microagent.tools.redis', 'RedisBroker'),
    ('microagent.tools.amqp', 'AMQPSignalBus'), ('microagent.tools.amqp', 'AMQPBroker'),
    ('microagent.tools.memory', 'MemorySignalBus'), ('microagent.tools.memory', 'MemoryBroker'),
    ('microagent.tools.nats', 'NATSSignalBus'), ('microagent.tools.nats', 'NATSBroker'),
    ('microagent.tools.mocks', 'BusMock'), ('microagent.tools.mocks', 'BrokerMock'),
    # the launcher
    ('microagent.launcher', 'load_configuration'), ('microagent.launcher', 'init_agent'),
    ('microagent.launcher', 'ServerInterrupt'), ('microagent.launcher', 'main'),
]
NEW_HOMES = {
    'microagent.tools.redis': 'microagent.backends.redis', 'microagent.tools.amqp': 'microagent.backends.amqp',
    'microagent.tools.memory': 'microagent.backends.memory', 'microagent.tools.nats': 'microagent.backends.nats',
    'microagent.tools.mocks': 'microagent.testing.mocks', 'microagent.launcher': 'microagent.cli.marun',
}


@pytest.mark.parametrize(('module', 'name'), PATHS, ids=[f'{m}.{n}' for m, n in PATHS])
def test_the_1x_path_imports(module: str, name: str) -> None:
    found = getattr(importlib.import_module(module), name)
    assert found is not None
    if module in NEW_HOMES:
        assert found is getattr(importlib.import_module(NEW_HOMES[module]), name)
