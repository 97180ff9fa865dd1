"""Queue declarations: a named work queue with a payload model, optionally bound to an exchange."""
from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar, Generic, TypeVar, overload

from .errors import DeclarationError, QueueNotFound
from .payload import Codec, JsonDict, codec_for, dict_codec
from .registry import Declaration, model_name

T = TypeVar('T')


class Queue(Declaration, Generic[T]):
    """A queue: ``Queue('mailer', Mail)`` or, 1.x style, ``Queue(name='mailer')``.

    ``exchange`` binds the queue to a named exchange: every message published to the exchange is
    routed to it (fanout), or only those whose routing key matches one of ``topics`` (AMQP globs:
    ``*`` is one word, ``#`` zero or more).
    """

    kind: ClassVar[str] = 'queue'
    _registry: ClassVar[dict[str, Queue[Any]]] = {}

    name: str
    model: type[T] | None
    exchange: str | None
    topics: tuple[str, ...]
    codec: Codec[T]

    @overload
    def __init__(self: Queue[T], name: str, model: type[T], *, exchange: str | None = None,
                 topics: Sequence[str] | None = None) -> None: ...

    @overload
    def __init__(self: Queue[JsonDict], name: str, model: None = None, *, exchange: str | None = None,
                 topics: Sequence[str] | None = None, schema: JsonDict | None = None) -> None: ...

    def __init__(self, name: str, model: Any = None, *, exchange: str | None = None,
                 topics: Sequence[str] | None = None, schema: JsonDict | None = None) -> None:
        self.name = name
        self.model = model
        self.exchange = exchange
        self.topics = tuple(topics or ())
        if self.topics and not exchange:
            raise DeclarationError(f'queue {name!r}: topics need an exchange')
        target = f'queue {name!r}'
        self.codec = codec_for(model, target) if model is not None else dict_codec(target, None, schema)  # type: ignore[assignment]
        self._register()

    def contract(self) -> tuple[Any, ...]:
        return (model_name(self.model), self.exchange, self.topics,
                None if self.model is not None else self.codec.schema)

    @cached_property
    def _topic_patterns(self) -> tuple[re.Pattern[str], ...]:
        return tuple(topic_pattern(topic) for topic in self.topics)

    def routes(self, exchange: str, routing_key: str) -> bool:
        """Whether a message published to ``exchange`` with ``routing_key`` reaches this queue."""
        if exchange != self.exchange:
            return False
        return not self.topics or any(p.match(routing_key) for p in self._topic_patterns)

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
    return re.compile(f'^{regex}$')
