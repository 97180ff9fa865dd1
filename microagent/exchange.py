"""Exchange declarations: a named router of messages to the queues bound to it.

``Exchange('push', 'topic')`` declares one; the 1.x ``Queue(exchange='push', topics=[...])`` form
implies it (topics: a topic exchange, none: fanout). The type comes from the declaration alone, so
every process that declares a queue of the exchange agrees on it, whatever else it imported.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

from microagent.declaration import Declaration, check_name
from microagent.errors import DeclarationError, QueueNotFound

ExchangeType = Literal['fanout', 'topic']
EXCHANGE_TYPES: tuple[str, ...] = get_args(ExchangeType)


class Exchange(Declaration):
    """``Exchange(name, 'fanout')`` copies each message to every bound queue; ``'topic'`` only to
    the queues whose topics match the routing key (AMQP globs). Declaring the name again with the
    other type is a DeclarationError."""

    kind: ClassVar[str] = 'exchange'
    _registry: ClassVar[dict[str, Exchange]] = {}

    name: str
    type: ExchangeType

    def __init__(self, name: str, type: ExchangeType = 'fanout') -> None:
        check_name('exchange', name)
        if type not in EXCHANGE_TYPES:
            raise DeclarationError(f'exchange {name!r}: type must be one of {", ".join(EXCHANGE_TYPES)}, '
                                   f'got {type!r}')
        self.name = name
        self.type = type
        self._register()

    def contract(self) -> tuple[Any, ...]:
        return (self.type,)

    def describe(self) -> str:
        return f'a {self.type} exchange'

    @classmethod
    def get(cls, name: str) -> Exchange:
        """The exchange declared under ``name``."""
        try:
            return cls._registry[name]
        except KeyError:
            raise QueueNotFound(f'No such exchange {name!r}') from None

    @classmethod
    def get_all(cls) -> dict[str, Exchange]:
        """Every declared exchange by name."""
        return dict(cls._registry)
