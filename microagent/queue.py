"""Queue declarations: a named work queue with a payload model, optionally bound to an exchange."""
from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, ClassVar, Generic, Literal, TypeVar, overload

from microagent.declaration import Declaration, check_name, model_name
from microagent.errors import DeclarationError, QueueNotFound
from microagent.exchange import Exchange
from microagent.payload import Codec, JsonDict, codec_for, dict_codec

T = TypeVar('T')

#: RabbitMQ's queue types (``x-queue-type``): classic (one node) or quorum (replicated, Raft)
QueueType = Literal['classic', 'quorum']
QUEUE_TYPES: tuple[QueueType, ...] = ('classic', 'quorum')


def check_queue_type(value: str | None, where: str) -> QueueType | None:
    """``value`` if it is a queue type (or None), else a DeclarationError naming ``where``."""
    if value is None:
        return None
    for known in QUEUE_TYPES:
        if value == known:
            return known
    raise DeclarationError(f'{where}: queue_type is {value!r}; expected one of {", ".join(map(repr, QUEUE_TYPES))}')


def check_delivery_limit(value: int | None, where: str) -> int | None:
    """``value`` if it is a delivery limit (an int >= 0, or None), else a DeclarationError."""
    if value is not None and (type(value) is not int or value < 0):
        raise DeclarationError(f'{where}: delivery_limit is {value!r}; expected an int >= 0 or None')
    return value


#: the most priority levels a queue may have: RabbitMQ recommends at most 10 (each level costs it, as it
#: costs a fetch on Redis and NATS, which look at every level), and more rarely means anything
MAX_PRIORITIES = 10


def check_priorities(value: int | None, where: str) -> int | None:
    """``value`` if it is a number of priority levels (an int from 2 to ``MAX_PRIORITIES``, or None),
    else a DeclarationError naming ``where``."""
    if value is not None and (type(value) is not int or not 2 <= value <= MAX_PRIORITIES):
        raise DeclarationError(f'{where}: priorities is {value!r}; expected an int from 2 to {MAX_PRIORITIES} '
                               '(the number of levels, 0 the lowest) or None')
    return value


class Queue(Declaration, Generic[T]):
    """A queue: ``Queue('mailer', Mail)`` or, 1.x style, ``Queue(name='mailer')``.

    ``exchange`` binds the queue to an exchange: every message published to it is routed to the
    queue (fanout), or only those whose routing key matches one of ``topics`` (AMQP globs: ``*`` is
    one word, ``#`` zero or more; a queue without topics on a topic exchange gets every message).
    A name declares the exchange too: topic with ``topics``, else fanout; an ``Exchange`` may be
    given instead. One exchange name with two types is a DeclarationError.

    ``queue_type`` and ``delivery_limit`` are RabbitMQ's (other backends ignore them): ``'quorum'``
    makes a replicated quorum queue, ``'classic'`` a classic one; None takes the broker's default.
    ``delivery_limit`` bounds how often a quorum queue hands out a message that comes back
    unacknowledged (a consumer that crashed or lost its connection, or stopped with it prefetched)
    before RabbitMQ dead-letters it; None takes the broker's default.

    ``priorities`` (2 to ``MAX_PRIORITIES``) gives the queue that many priority levels, 0 the
    lowest and the default: ``send(..., priority=n)`` puts a message at level ``n``, and consumers
    take the highest level first (strict priority, as RabbitMQ's ``x-max-priority``; retries, delays,
    releases and requeued dead letters keep a message's level).
    """

    kind: ClassVar[str] = 'queue'
    _registry: ClassVar[dict[str, Queue[Any]]] = {}

    name: str
    model: type[T] | None
    exchange: str | None
    exchange_declaration: Exchange | None
    topics: tuple[str, ...]
    codec: Codec[T]
    queue_type: QueueType | None
    delivery_limit: int | None
    priorities: int | None = None  # a class default: a GroupQueue (groups.py) has no levels

    @overload
    def __init__(self: Queue[T], name: str, model: type[T], *, exchange: str | Exchange | None = None,
                 topics: Sequence[str] | None = None, queue_type: QueueType | None = None,
                 delivery_limit: int | None = None, priorities: int | None = None) -> None: ...

    @overload
    def __init__(self: Queue[JsonDict], name: str, model: None = None, *, exchange: str | Exchange | None = None,
                 topics: Sequence[str] | None = None, schema: JsonDict | None = None,
                 queue_type: QueueType | None = None, delivery_limit: int | None = None,
                 priorities: int | None = None) -> None: ...

    def __init__(self, name: str, model: Any = None, *, exchange: str | Exchange | None = None,
                 topics: Sequence[str] | None = None, schema: JsonDict | None = None,
                 queue_type: QueueType | None = None, delivery_limit: int | None = None,
                 priorities: int | None = None) -> None:
        check_name('queue', name)  # before its exchange is declared: a bad name declares nothing
        self.name = name
        self.queue_type = check_queue_type(queue_type, f'queue {name!r}')
        self.delivery_limit = check_delivery_limit(delivery_limit, f'queue {name!r}')
        self.priorities = check_priorities(priorities, f'queue {name!r}')
        self.model = model
        self.topics = tuple(topics or ())
        if self.topics and not exchange:
            raise DeclarationError(f'queue {name!r}: topics need an exchange')
        self.exchange_declaration = _exchange_of(name, exchange, self.topics)
        self.exchange = self.exchange_declaration.name if self.exchange_declaration else None
        target = f'queue {name!r}'
        self.codec = codec_for(model, target) if model is not None else dict_codec(target, None, schema)  # type: ignore[assignment]
        self._register()

    def contract(self) -> tuple[Any, ...]:
        return (model_name(self.model), self.exchange, self.topics,
                None if self.model is not None else self.codec.schema, self.queue_type, self.delivery_limit,
                self.priorities)

    def routes(self, exchange: str, routing_key: str) -> bool:
        """Whether a message published to ``exchange`` with ``routing_key`` reaches this queue."""
        if exchange != self.exchange:
            return False
        return topics_match(self.topics, routing_key)

    @classmethod
    def get(cls, name: str) -> Queue[Any]:
        """The queue declared under ``name``."""
        try:
            return cls._registry[name]
        except KeyError:
            raise QueueNotFound(f'No such queue {name!r}') from None

    @classmethod
    def get_all(cls) -> dict[str, Queue[Any]]:
        """Every declared queue by name."""
        return dict(cls._registry)


def _exchange_of(queue: str, exchange: str | Exchange | None, topics: tuple[str, ...]) -> Exchange | None:
    """The exchange a queue binds to: the one given, or the one its 1.x form implies."""
    if exchange is None or exchange == '':
        return None
    if isinstance(exchange, Exchange):
        if topics and exchange.type != 'topic':
            raise DeclarationError(f'queue {queue!r}: topics need a topic exchange; {exchange.name!r} is '
                                   f'{exchange.type}')
        return exchange
    try:
        return Exchange(exchange, 'topic' if topics else 'fanout')
    except DeclarationError as exc:
        raise DeclarationError(f'queue {queue!r}: {exc}; declare it once with Exchange(name, type) and pass '
                               f'that as exchange=') from None


@lru_cache(maxsize=1024)
def _patterns(topics: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(topic_pattern(topic) for topic in topics)


def topics_match(topics: tuple[str, ...], routing_key: str) -> bool:
    """Whether a binding with ``topics`` (none: every key) takes a message with ``routing_key``."""
    return not topics or any(p.fullmatch(routing_key) for p in _patterns(topics))


def topic_pattern(topic: str) -> re.Pattern[str]:
    """An AMQP topic binding key as a regex: words split by ``.``, ``*`` one word, ``#`` any."""
    parts: list[str] = []
    for word in topic.split('.'):
        if word == '#':
            parts.append(r'(?:[^.]+(?:\.[^.]+)*)?')
        elif word == '*':
            parts.append(r'[^.]+')
        else:
            parts.append(re.escape(word))
    regex = r'\.'.join(parts)
    # '#' may match zero words, taking its neighbouring dot with it
    regex = regex.replace(r'\.(?:[^.]+(?:\.[^.]+)*)?', r'(?:\.[^.]+)*').replace(
        r'(?:[^.]+(?:\.[^.]+)*)?\.', r'(?:[^.]+\.)*')
    return re.compile(regex)  # used with fullmatch: `$` would let a trailing newline through
