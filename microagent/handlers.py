"""Handlers: the spec a decorator (``decorators.py``) attaches to a method, and how a method bound
to an agent is called (``Receiver``, ``Consumer``, which the engines drive).

A handler is called in one of two conventions, chosen once from its signature:

* typed: the first parameter after ``self`` receives the validated model instance, and keyword
  parameters named ``sender`` / ``signal`` are filled when present, ``message`` with the
  ``message.Message`` being handled (ids, attempt, headers), read from the headers only then;
* 1.x: a handler with ``**kwargs`` receives the payload fields as keywords (plus ``signal`` and
  ``sender`` for receivers, the DTO under ``dto_name or 'dto'`` for consumers with a ``dto_class``).
"""
from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from functools import cached_property
from typing import Any, Literal, Protocol, TypeVar

from microagent.deadlines import Deadlines
from microagent.errors import InvalidPayload
from microagent.message import Message, current_message
from microagent.middleware import HandlingKind, MiddlewareLike, Site
from microagent.payload import Codec, codec_for, undecodable
from microagent.queue import Queue
from microagent.ratelimit import Rate
from microagent.sends import Sender
from microagent.signal import Signal

T = TypeVar('T')

HANDLERS_ATTR = '__microagent_handlers__'
HOOK_LABELS = ('pre_start', 'post_start', 'pre_stop', 'server')
DEFAULT_CONCURRENCY = 32
DEFAULT_RECEIVER_CONCURRENCY = 64
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_DELAY = 1.0
DEFAULT_BATCH_WAIT = 0.2
#: where a new group starts reading its signal: what is sent from now on, or all the signal retains
GroupStart = Literal['now', 'first']
#: ``@receiver(group=...)``: a group's name, True for the agent's name, False for broadcast, None
#: for the agent's default
GroupChoice = str | bool | None


@dataclass(frozen=True)
class CallStyle:
    """How to call a handler, read once from its signature."""

    legacy: bool          # has **kwargs: 1.x keyword call
    positional: bool      # takes a first positional argument (the DTO)
    keywords: frozenset[str]  # named keyword parameters it accepts (sender, signal, message, ...)
    message: bool = False  # names a ``message`` parameter: gets the ``Message`` being handled

    @classmethod
    def of(cls, func: Callable[..., Any]) -> CallStyle:
        params = list(inspect.signature(func).parameters.values())[1:]  # drop self
        legacy = any(p.kind is p.VAR_KEYWORD for p in params)
        first = params[0] if params else None
        positional = first is not None and first.kind in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD) \
            and first.name not in ('sender', 'signal') and not (first.name == 'message' and _is_message(func))
        keywords = frozenset(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        wants_message = 'message' in keywords and not (positional and first is not None and first.name == 'message')
        return cls(legacy=legacy, positional=positional, keywords=keywords, message=wants_message)


def _is_message(func: Callable[..., Any]) -> bool:
    """Whether the handler's ``message`` parameter is annotated ``microagent.Message``: a first
    parameter named ``message`` is the payload (1.x handlers and models named Message use it), unless
    its annotation says it is the message being handled."""
    try:
        hint = typing.get_type_hints(func).get('message')
    except Exception:  # an annotation that does not resolve here: judge by its text
        hint = inspect.signature(func).parameters['message'].annotation
        return isinstance(hint, str) and hint.replace(' ', '') in _MESSAGE_HINTS
    return hint is Message or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                               and Message in typing.get_args(hint))


_MESSAGE_HINTS = frozenset({'microagent.Message', 'microagent.message.Message', 'Message|None'})


def handler_name(func: Callable[..., Any]) -> str:
    return getattr(func, '__qualname__', repr(func))


@dataclass(frozen=True)
class Grouping:
    """How a grouped receiver shares its signals with the other members of its group."""

    name: str
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_delay: float = DEFAULT_RETRY_DELAY
    start: GroupStart = 'now'


@dataclass(frozen=True)
class ReceiverSpec:
    signal: Signal[Any, Any]
    timeout: float
    style: CallStyle
    concurrency: int = DEFAULT_RECEIVER_CONCURRENCY
    group: GroupChoice = None
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_delay: float = DEFAULT_RETRY_DELAY
    start: GroupStart = 'now'


@dataclass(frozen=True)
class ConsumerSpec:
    queue: Queue[Any]
    timeout: float
    style: CallStyle
    dto_class: type[Any] | None = None
    dto_name: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def concurrency(self) -> int:
        """Handlers of this consumer running at once (a batch consumer's: batches, one by default)."""
        return int(self.options.get('concurrency', 1 if self.options.get('batch') else DEFAULT_CONCURRENCY))

    @cached_property
    def prefetch(self) -> int:
        """Messages fetched ahead of free handlers, so one round trip feeds many handlers (like
        Celery's prefetch multiplier: 4 x concurrency by default; a batch consumer's, two batches
        per handler). They stay owned by this consumer: released on stop, reclaimed by another
        consumer if this one dies."""
        prefetch = self.options.get('prefetch')
        if prefetch is not None:
            return int(prefetch)
        return 2 * self.batch * self.concurrency if self.batch else 4 * self.concurrency

    @cached_property
    def batch(self) -> int | None:
        """A batch consumer's largest batch; None for one message per call."""
        batch = self.options.get('batch')
        return None if batch is None else int(batch)

    @cached_property
    def rate(self) -> Rate | None:
        """The consumer's rate limit (``rate='100/s'``), shared by every consumer of the queue."""
        rate = self.options.get('rate')
        return None if rate is None else Rate.parse(rate)

    @cached_property
    def batch_wait(self) -> float:
        """How long a batch consumer waits for a batch to fill before it handles what it has."""
        return float(self.options.get('batch_wait', DEFAULT_BATCH_WAIT))

    @cached_property
    def max_retries(self) -> int:
        return int(self.options.get('max_retries', DEFAULT_MAX_RETRIES))

    @cached_property
    def retry_delay(self) -> float:
        """Backoff base: retries wait retry_delay, 2 x retry_delay, ... (capped at a minute)."""
        return float(self.options.get('retry_delay', DEFAULT_RETRY_DELAY))

    @cached_property
    def autoack(self) -> bool:
        return bool(self.options.get('autoack', True))

    @cached_property
    def dto_codec(self) -> Codec[Any] | None:
        """The codec of ``dto_class`` when it is a model msgspec or pydantic can validate."""
        if self.dto_class is None:
            return None
        try:
            return codec_for(self.dto_class, f'queue {self.queue.name!r} (dto_class)')
        except ValueError:
            return None


@dataclass(frozen=True)
class PeriodicSpec:
    period: float
    timeout: float
    start_after: float


@dataclass(frozen=True)
class CronSpec:
    spec: str
    timeout: float
    tz: tzinfo | None = None


@dataclass(frozen=True)
class HookSpec:
    label: str


Spec = ReceiverSpec | ConsumerSpec | PeriodicSpec | CronSpec | HookSpec


def specs_of(func: object) -> list[Spec]:
    return list(getattr(func, HANDLERS_ATTR, ()))


def attach(func: Callable[..., Any], spec: Spec) -> None:
    specs: list[Spec] = list(getattr(func, HANDLERS_ATTR, ()))
    specs.append(spec)
    setattr(func, HANDLERS_ATTR, specs)


async def call_maybe_async(func: Callable[[], Any]) -> Any:
    """Call a sync or async hook."""
    result = func()
    if inspect.isawaitable(result):
        result = await result
    return result


class Owner(Sender, Protocol):
    """What the engines ask of the agent a bound handler belongs to (``MicroAgent`` is one)."""

    middlewares: tuple[MiddlewareLike, ...]


@dataclass(eq=False)
class Receiver:
    """A receiver method bound to an agent instance."""

    agent: Owner
    handler: Callable[..., Awaitable[Any]]
    signal: Signal[Any, Any]
    timeout: float
    style: CallStyle
    concurrency: int = DEFAULT_RECEIVER_CONCURRENCY  # calls running at once; more wait in the bus
    grouping: Grouping | None = None  # None: broadcast, every process gets every signal
    key: str = field(init=False)  # the answer key of 1.x RPC: the handler's ``__qualname__``
    site: Site | None = field(default=None, init=False, repr=False)  # for middlewares, made on first use
    deadlines: Deadlines = field(init=False, repr=False)  # the timeout of its calls, one timer for all

    def __post_init__(self) -> None:
        # 1.x keys answers by the function's qualname: an inherited receiver answers as ``Base.method``
        self.key = self.handler.__qualname__
        self.deadlines = Deadlines(self.timeout)

    @property
    def name(self) -> str:
        """``Agent.method`` of the running agent's class, as consumers are named (logs, middlewares)."""
        return f'{type(self.agent).__name__}.{self.handler.__name__}'

    async def __call__(self, payload: Any, sender: str) -> Any:
        style = self.style
        if style.legacy:
            fields = self.signal.codec.to_kwargs(payload)
            if style.message:
                fields['message'] = current_message()
            call = self.handler(signal=self.signal, sender=sender, **fields)
        else:
            kwargs: dict[str, Any] = {}
            if 'sender' in style.keywords:
                kwargs['sender'] = sender
            if 'signal' in style.keywords:
                kwargs['signal'] = self.signal
            if style.message:
                kwargs['message'] = current_message()
            call = self.handler(payload, **kwargs) if style.positional else self.handler(**kwargs)
        return await self.deadlines.run(call)


class Consumer:
    """A consumer method bound to an agent instance; its settings come from the ``@consumer`` spec."""

    #: how middlewares see its handlings, and the name they are for
    kind: HandlingKind = 'consumer'
    #: True when ``screen`` looks at each delivery before it is decoded (a grouped receiver's requests)
    screens = False

    def screen(self, delivery: Any) -> None:
        """Raise ``InvalidPayload`` for a delivery the handler must never see (dead-lettered unhandled)."""

    def __init__(self, agent: Owner, handler: Callable[..., Awaitable[Any]], spec: ConsumerSpec) -> None:
        self.agent = agent
        self.handler = handler
        self.queue: Queue[Any] = spec.queue
        self.timeout = spec.timeout
        self.style = spec.style
        self.dto_class = spec.dto_class
        self.dto_name = spec.dto_name
        self.options = spec.options
        self.dto_codec = spec.dto_codec
        self.concurrency = spec.concurrency
        self.prefetch = spec.prefetch
        self.max_retries = spec.max_retries
        self.retry_delay = spec.retry_delay
        self.autoack = spec.autoack
        self.batch = spec.batch
        self.batch_wait = spec.batch_wait
        self.rate = spec.rate
        self.key = f'{type(agent).__name__}.{handler.__name__}'
        self.target = self.queue.name

    def __repr__(self) -> str:
        return f'<Consumer {self.key} of queue {self.queue.name}>'

    def decode(self, data: bytes) -> tuple[Any, Any]:
        """The queue payload and, with a ``dto_class``, the DTO built from it."""
        payload = self.queue.codec.decode(data)
        if self.dto_class is None:
            return payload, None
        try:
            fields = self.queue.codec.to_kwargs(payload)
            if self.dto_codec is not None:
                return payload, self.dto_codec.from_kwargs(fields)
            return payload, self.dto_class(**fields)
        except InvalidPayload:
            raise
        except (TypeError, ValueError) as exc:
            raise InvalidPayload(f'queue {self.queue.name!r} (dto_class)', [str(exc)]) from None
        except Exception as exc:  # a dto_class constructor may raise anything: the message is still invalid
            raise undecodable(f'queue {self.queue.name!r} (dto_class)', exc) from None

    def __call__(self, decoded: tuple[Any, Any], context: Mapping[str, Any]) -> Awaitable[Any]:
        """Start the handler call; the broker awaits it under the consumer's ``timeout``."""
        payload, dto = decoded
        style = self.style
        value = payload if self.dto_class is None else dto
        if not (style.legacy or context or style.message):  # the common typed call
            return self.handler(value) if style.positional else self.handler()
        if style.legacy:
            kwargs = {**self.queue.codec.to_kwargs(payload), **context}
            if self.dto_class is not None:
                kwargs[self.dto_name or 'dto'] = dto
            if style.message:
                kwargs['message'] = current_message()
            return self.handler(**kwargs)
        extra = {key: value for key, value in context.items() if key in style.keywords}
        if style.message:
            extra['message'] = current_message()
        return self.handler(value, **extra) if style.positional else self.handler(**extra)
