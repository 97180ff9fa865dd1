"""A third-party backend, as a user would write one: a thin wrapper over memory that serves
``toy://NAME`` (the hub named NAME), registered through the ``microagent.backends`` entry point
group by tests/unit/test_registry.py."""
from __future__ import annotations

from typing import Any

from microagent.backends import Backend
from microagent.backends.memory import MemoryBroker, MemorySignalBus


def _memory(dsn: str) -> str:
    return 'memory://' + dsn.removeprefix('toy://')


class ToySignalBus(MemorySignalBus):
    def __init__(self, dsn: str = 'toy://', **options: Any) -> None:
        super().__init__(_memory(dsn), **options)
        self.dsn = dsn


class ToyBroker(MemoryBroker):
    def __init__(self, dsn: str = 'toy://', **options: Any) -> None:
        super().__init__(_memory(dsn), **options)
        self.dsn = dsn


BACKEND = Backend('toy', ('toy',), 'tests.toy_backend.ToySignalBus', 'tests.toy_backend.ToyBroker',
                  system='toy', package='tests.toy_backend', one_process=True,
                  reserved_headers=frozenset({'x-toy-seq'}))
