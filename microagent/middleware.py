"""Middlewares: code that wraps every handling and every send, so that tracing, metrics, auditing
or tenancy are written once, beside the engine instead of inside it.

A middleware is an object with two coroutine methods, each given what is about to happen and
``call_next``, the rest of the chain; it awaits ``call_next()`` (or not) and returns its result::

    class Timing(Middleware):
        async def handle(self, handling: Handling, call_next: Next) -> Any:
            started = time.perf_counter()
            try:
                return await call_next()
            finally:
                print(handling.handler, handling.outcome, time.perf_counter() - started)

An agent's middlewares (``MicroAgent(..., middlewares=[...])`` or ``agent.use(...)``) wrap its
handlers: receivers, consumers, periodic and cron tasks. A bus's or broker's (``bus.use(...)``;
an agent adds its own to its bus and broker) wrap what is sent through it: signals, RPC calls and
answers, queue messages, exchange publishes. The first middleware given is the outermost.

When ``call_next()`` raises, the engine has already decided what becomes of the message and says so
in ``handling.outcome`` (``retried`` or ``dead_lettered`` for a consumer, ``failed`` for the others;
``timed_out`` when the handler overran its timeout). A message that fails validation reaches the
middlewares too, as a handling whose ``call_next()`` raises ``InvalidPayload`` without calling the
handler. With no middleware configured the engine takes its usual path: nothing is allocated.
"""
from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any, Literal, NamedTuple, Protocol

from microagent.errors import InvalidArgument
from microagent.message import SENT_AT, Lazy, Message, sent_at_of

__all__ = [
    'Handling',
    'HandlingKind',
    'Middleware',
    'MiddlewareLike',
    'Next',
    'Outcome',
    'Sending',
    'SendingKind',
    'Site',
    'active',
    'added',
    'backend_name',
    'wrap',
]

#: the rest of the chain: the next middleware, at the end the handler or the transport's send
Next = Callable[[], Awaitable[Any]]
HandlingKind = Literal['receiver', 'consumer', 'periodic', 'cron']
SendingKind = Literal['signal', 'call', 'answer', 'queue', 'exchange']


class Outcome(enum.StrEnum):
    OK = 'ok'
    FAILED = 'failed'  # a receiver, periodic or cron run raised: nothing runs it again
    RETRIED = 'retried'  # a consumer raised: the message is delivered again after ``retry_delay``
    DEAD_LETTERED = 'dead_lettered'  # a consumer raised for the last time, or the message was invalid


class Site:
    """What stays the same over every run of one handler: built once, shared by each of its handlings."""

    __slots__ = ('agent', 'backend', 'handler', 'kind', 'max_retries', 'name')

    def __init__(self, kind: HandlingKind, agent: str, handler: str, name: str, backend: str,
                 max_retries: int = 0) -> None:
        self.kind: HandlingKind = kind
        self.agent = agent
        self.handler = handler
        self.name = name
        self.backend = backend
        self.max_retries = max_retries


class Handling:
    """One run of a handler, as a middleware sees it: which, for what, and how it ended.

    Built per message, so it holds little: the handler's ``Site``, the message (read on first use),
    the attempt, and the failure once the engine has recorded one."""

    __slots__ = ('_failure', '_lazy', 'attempt', 'site')

    def __init__(self, site: Site, lazy: Lazy | None = None, attempt: int = 1) -> None:
        self.site = site
        self._lazy = lazy
        self.attempt = attempt  #: delivery count of a queue message, from 1
        self._failure: _Failure | None = None

    def __repr__(self) -> str:
        return f'<Handling {self.kind} {self.handler} of {self.name}: {self.outcome}>'

    @property
    def kind(self) -> HandlingKind:
        return self.site.kind

    @property
    def agent(self) -> str:
        """The agent class's name."""
        return self.site.agent

    @property
    def handler(self) -> str:
        """``Agent.method``."""
        return self.site.handler

    @property
    def name(self) -> str:
        """The signal or queue, or the task's ``Agent.method`` for periodic and cron."""
        return self.site.name

    @property
    def backend(self) -> str:
        """'memory', 'redis', 'amqp', 'nats' ('' for periodic and cron runs)."""
        return self.site.backend

    @property
    def max_retries(self) -> int:
        return self.site.max_retries

    @property
    def message(self) -> Message | None:
        """The message handled (headers, ids, ``sent_at``), read on first use; None for a timer run."""
        return self._lazy.message if self._lazy is not None else None

    def header(self, name: str) -> str | None:
        """One header of the message handled, as received (cheaper than ``message`` for one value)."""
        return self._lazy.header(name) if self._lazy is not None else None

    @property
    def sent_at(self) -> float | None:
        """When the message was sent, by the sender's clock; None for a timer run or a 1.x body."""
        return sent_at_of(self.header(SENT_AT))

    @property
    def outcome(self) -> Outcome:
        return _OK if self._failure is None else self._failure.outcome

    @property
    def error(self) -> BaseException | None:
        return None if self._failure is None else self._failure.error

    @property
    def timed_out(self) -> bool:
        """The handler overran its timeout (the error is then a ``TimeoutError``)."""
        return self._failure is not None and self._failure.timed_out

    @property
    def retry_delay(self) -> float | None:
        """Seconds until the next attempt, when ``RETRIED``."""
        return None if self._failure is None else self._failure.retry_delay

    def failed(self, error: BaseException, outcome: Outcome, *, timed_out: bool = False,
               retry_delay: float | None = None) -> None:
        """The engine records the end of a failed run before the error reaches the middlewares."""
        self._failure = _Failure(error, outcome, timed_out, retry_delay)


class _Failure(NamedTuple):
    error: BaseException
    outcome: Outcome
    timed_out: bool
    retry_delay: float | None


_OK = Outcome.OK  # read per message: a module constant, not an enum lookup


class Sending:
    """One send, as a middleware sees it. ``headers`` holds each message's headers (one dict per
    message; several for ``send_many``), built and checked: a middleware may read them and set any,
    the standard ones included (a tracer writes its ``traceparent``)."""

    __slots__ = ('backend', 'headers', 'kind', 'name', 'sender')

    def __init__(self, kind: SendingKind, name: str, backend: str, headers: Sequence[dict[str, str]],
                 sender: str | None = None) -> None:
        self.kind: SendingKind = kind
        self.name = name  #: the signal, queue or exchange
        self.backend = backend
        self.headers = headers
        self.sender = sender  #: a signal's sender

    def __repr__(self) -> str:
        return f'<Sending {self.kind} {self.name}: {len(self.headers)} message(s)>'


class MiddlewareLike(Protocol):
    """Optionally also ``enabled``: read per message, false leaves the middleware out of that
    call (a tracer with nothing recording); without it a middleware is always in."""

    async def handle(self, handling: Handling, call_next: Next) -> Any: ...

    async def send(self, sending: Sending, call_next: Next) -> Any: ...


class Middleware:
    """A middleware that passes everything on: subclass it and override ``handle``, ``send`` or both."""

    #: read per message; a subclass that is idle for now (nothing to record) says False and costs nothing
    enabled: bool = True

    async def handle(self, handling: Handling, call_next: Next) -> Any:
        return await call_next()

    async def send(self, sending: Sending, call_next: Next) -> Any:
        return await call_next()


def active(middlewares: tuple[MiddlewareLike, ...]) -> tuple[MiddlewareLike, ...]:
    """The middlewares that take part in this call: all but those ``enabled`` false now."""
    if len(middlewares) == 1:  # the common case, without a loop
        return middlewares if getattr(middlewares[0], 'enabled', True) else ()
    for middleware in middlewares:
        if not getattr(middleware, 'enabled', True):
            return tuple([m for m in middlewares if getattr(m, 'enabled', True)])
    return middlewares


def wrap(middlewares: Sequence[MiddlewareLike], method: Literal['handle', 'send'],
         context: Handling | Sending, call: Next) -> Next:
    """``call`` behind the middlewares' ``method``, the first middleware outermost."""
    for middleware in reversed(middlewares):
        call = partial(getattr(middleware, method), context, call)
    return call


def added(current: tuple[MiddlewareLike, ...], new: Iterable[MiddlewareLike]) -> tuple[MiddlewareLike, ...]:
    """``current`` followed by the ``new`` middlewares it does not hold yet (by identity), checked."""
    result = list(current)
    for middleware in new:
        if not (callable(getattr(middleware, 'handle', None)) and callable(getattr(middleware, 'send', None))):
            raise InvalidArgument(f'{middleware!r} is not a middleware: it needs async handle() and send() '
                                  f'methods (subclass microagent.Middleware)')
        if not any(middleware is known for known in result):
            result.append(middleware)
    return tuple(result)


def backend_name(transport: object) -> str:
    """'memory', 'redis', 'amqp', 'nats': the backend module a transport comes from, or the backend
    package (``microagent.backends.amqp.queue`` is 'amqp')."""
    module = type(transport).__module__
    _, found, inside = module.partition('microagent.backends.')
    return (inside.partition('.')[0] if found else module.rpartition('.')[2]).partition('_')[0]
