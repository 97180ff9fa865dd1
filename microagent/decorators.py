"""The handler decorators: ``@receiver``, ``@consumer``, ``@periodic``, ``@cron`` and ``@on``.

A decorator only checks its arguments and attaches a spec (``handlers.py``) to the function; the
agent class collects the specs when it is defined. The typed overloads are here so mypy accepts a
handler only when its model matches the declaration's.
"""
from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import tzinfo
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, cast, overload

from croniter import croniter

from microagent.declaration import check_group_name
from microagent.errors import DeclarationError, UsageError
from microagent.handlers import (
    DEFAULT_BATCH_WAIT,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RECEIVER_CONCURRENCY,
    DEFAULT_RETRY_DELAY,
    HOOK_LABELS,
    CallStyle,
    ConsumerSpec,
    CronSpec,
    GroupChoice,
    GroupStart,
    HookSpec,
    PeriodicSpec,
    ReceiverSpec,
    attach,
    handler_name,
    specs_of,
)
from microagent.queue import Queue
from microagent.ratelimit import Rate, check_rate
from microagent.signal import Signal

T = TypeVar('T')
R = TypeVar('R')
D = TypeVar('D')
D_contra = TypeVar('D_contra', contravariant=True)
S = TypeVar('S')
A = TypeVar('A')
P = ParamSpec('P')


def _check_seconds(func: Callable[..., Any], name: str, value: float, *, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or (value < 0 if zero_ok else value <= 0):
        bound = '>= 0' if zero_ok else '> 0'
        raise DeclarationError(f'{handler_name(func)}: {name} must be a finite number {bound}, got {value!r}')
    return float(value)


def _check_async(func: Callable[..., Any], decorator: str) -> None:
    if not inspect.iscoroutinefunction(func):
        raise UsageError(f'{handler_name(func)}: @{decorator} needs an async function')


# Typed decorator objects. The overloads let mypy accept a typed handler only when its DTO parameter
# matches the declaration (and, for RPC, its answer the declared type), while 1.x ``**kwargs``
# handlers stay accepted. The protocols name the agent parameter ``self`` (not positional-only):
# a handler's own ``self`` would otherwise clash with the keywords ``**kwargs`` may carry.

class _KwargsHandler(Protocol):
    """1.x consumer: the payload fields (and the DTO) as keywords."""

    def __call__(_, self: Any, **kwargs: Any) -> Awaitable[Any]: ...


class _SignalKwargsHandler(Protocol):
    """1.x receiver: the payload fields plus ``signal`` and ``sender`` as keywords (any subset named)."""

    def __call__(_, self: Any, *, signal: Signal[Any, Any], sender: str, **kwargs: Any) -> Awaitable[Any]: ...


KwargsHandler = TypeVar('KwargsHandler', bound=_KwargsHandler)
SignalKwargsHandler = TypeVar('SignalKwargsHandler', bound=_SignalKwargsHandler)
AnyHandler = TypeVar('AnyHandler', bound=Callable[..., Awaitable[Any]])
T1 = TypeVar('T1')
T2 = TypeVar('T2')
T3 = TypeVar('T3')
R1 = TypeVar('R1')
R2 = TypeVar('R2')
R3 = TypeVar('R3')
JsonPayload = dict[str, Any]


class _ReceiverDecorator(Generic[T, R]):
    def __init__(self, signals: tuple[Signal[Any, Any], ...], timeout: float, concurrency: int,
                 grouping: dict[str, Any]) -> None:
        self.signals = signals
        self.timeout = timeout
        self.concurrency = concurrency
        self.grouping = grouping

    @overload
    def __call__(self, func: Callable[Concatenate[S, T, P], Awaitable[R | None]]
                 ) -> Callable[Concatenate[S, T, P], Awaitable[R | None]]: ...

    @overload
    def __call__(self, func: Callable[[S], Awaitable[R | None]]) -> Callable[[S], Awaitable[R | None]]: ...

    @overload
    def __call__(self, func: SignalKwargsHandler) -> SignalKwargsHandler: ...

    @overload  # 1.x declarations carry no types: 1.x handlers may name payload fields as parameters
    def __call__(self: _ReceiverDecorator[JsonPayload, Any], func: AnyHandler) -> AnyHandler: ...

    def __call__(self, func: Any) -> Any:
        _check_async(func, 'receiver')
        timeout = _check_seconds(func, 'timeout', self.timeout)
        concurrency = self.concurrency
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise DeclarationError(f'{handler_name(func)}: concurrency must be an integer >= 1, got {concurrency!r}')
        style = CallStyle.of(func)
        grouping = _check_grouping(func, self.grouping)
        for signal in self.signals:
            attach(func, ReceiverSpec(signal=signal, timeout=timeout, style=style, concurrency=concurrency,
                                      **grouping))
        return func


def _check_grouping(func: Callable[..., Any], grouping: dict[str, Any]) -> dict[str, Any]:
    """The grouped receiver's options, checked when the class is defined."""
    where = handler_name(func)
    group = grouping['group']
    if not (group is None or isinstance(group, bool)):
        check_group_name(group, where)
    retries = grouping['max_retries']
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise DeclarationError(f'{where}: max_retries must be an integer >= 0, got {retries!r}')
    if grouping['start'] not in ('now', 'first'):
        raise DeclarationError(f"{where}: start must be 'now' or 'first', got {grouping['start']!r}")
    return {**grouping, 'retry_delay': _check_seconds(func, 'retry_delay', grouping['retry_delay'])}


@overload
def receiver(signal: Signal[T, R], /, *, timeout: float = 60,
             concurrency: int = DEFAULT_RECEIVER_CONCURRENCY,
             group: GroupChoice = None, max_retries: int = DEFAULT_MAX_RETRIES,
             retry_delay: float = DEFAULT_RETRY_DELAY, start: GroupStart = 'now') -> _ReceiverDecorator[T, R]: ...


@overload
def receiver(signal1: Signal[T1, R1], signal2: Signal[T2, R2], /, *,
             timeout: float = 60, concurrency: int = DEFAULT_RECEIVER_CONCURRENCY,
             group: GroupChoice = None, max_retries: int = DEFAULT_MAX_RETRIES,
             retry_delay: float = DEFAULT_RETRY_DELAY,
             start: GroupStart = 'now') -> _ReceiverDecorator[T1 | T2, R1 | R2]: ...


@overload
def receiver(signal1: Signal[T1, R1], signal2: Signal[T2, R2], signal3: Signal[T3, R3], /, *,
             timeout: float = 60, concurrency: int = DEFAULT_RECEIVER_CONCURRENCY,
             group: GroupChoice = None, max_retries: int = DEFAULT_MAX_RETRIES,
             retry_delay: float = DEFAULT_RETRY_DELAY,
             start: GroupStart = 'now') -> _ReceiverDecorator[T1 | T2 | T3, R1 | R2 | R3]: ...


@overload
def receiver(signal1: Signal[Any, Any], signal2: Signal[Any, Any], signal3: Signal[Any, Any],
             signal4: Signal[Any, Any], /, *signals: Signal[Any, Any],
             timeout: float = 60, concurrency: int = DEFAULT_RECEIVER_CONCURRENCY,
             group: GroupChoice = None, max_retries: int = DEFAULT_MAX_RETRIES,
             retry_delay: float = DEFAULT_RETRY_DELAY, start: GroupStart = 'now') -> _ReceiverDecorator[Any, Any]: ...


def receiver(*signals: Signal[Any, Any], timeout: float = 60, concurrency: int = DEFAULT_RECEIVER_CONCURRENCY,
             group: GroupChoice = None, max_retries: int = DEFAULT_MAX_RETRIES,
             retry_delay: float = DEFAULT_RETRY_DELAY, start: GroupStart = 'now') -> _ReceiverDecorator[Any, Any]:
    """Receive ``signals`` (pub/sub). Many handlers may receive one signal; the return value of a
    handler is its answer when the signal is sent with ``call``. At most ``concurrency`` calls of
    the handler run at once; further signals wait in the bus's bounded backlog, not in tasks.

    ``group`` shares each signal with the other members of a group (the replicas of a service): one
    of them handles it, at least once, retried ``max_retries`` times with backoff from
    ``retry_delay`` s, then dead-lettered. A name, True for the agent's name, False for broadcast,
    None for the agent's own ``group`` (broadcast unless it has one). ``start``: a new group reads
    what is sent from ``'now'``, or from the ``'first'`` signal the bus retains."""
    if not signals or not all(isinstance(s, Signal) for s in signals):
        raise UsageError(f'@receiver needs one or more Signal declarations, got {signals!r}')
    grouping = {'group': group, 'max_retries': max_retries, 'retry_delay': retry_delay, 'start': start}
    return _ReceiverDecorator(signals, timeout, concurrency, grouping)


class _DtoKwargsHandler(Protocol[D_contra]):
    """1.x consumer with a ``dto_class``: the payload fields as keywords and the DTO as ``dto``."""

    def __call__(_, self: Any, *, dto: D_contra, **kwargs: Any) -> Awaitable[Any]: ...


class _ConsumerBase:
    def __init__(self, queue: Queue[Any], timeout: float, dto_class: type[Any] | None,
                 dto_name: str | None, options: dict[str, Any]) -> None:
        self.queue, self.timeout, self.dto_class, self.dto_name, self.options = \
            queue, timeout, dto_class, dto_name, options

    def _bind(self, func: Any) -> Any:
        _check_async(func, 'consumer')
        timeout = _check_seconds(func, 'timeout', self.timeout)
        _check_consumer_options(func, self.queue, self.options)
        if self.options.get('batch') is not None:
            _check_batch_handler(func, self.dto_class)
        if any(isinstance(s, ConsumerSpec) for s in specs_of(func)):
            raise DeclarationError(f'{handler_name(func)}: a handler consumes one queue only')
        attach(func, ConsumerSpec(queue=self.queue, timeout=timeout, style=CallStyle.of(func),
                                   dto_class=self.dto_class, dto_name=self.dto_name, options=self.options))
        return func


CONSUMER_OPTIONS = ('concurrency', 'prefetch', 'max_retries', 'retry_delay', 'autoack', 'batch', 'batch_wait',
                    'rate')
_MIN_INT = {'concurrency': 1, 'prefetch': 0, 'max_retries': 0, 'batch': 1}


def _check_consumer_options(func: Callable[..., Any], queue: Queue[Any], options: Mapping[str, Any]) -> None:
    """Refuse, when the class is defined, an option the consumer would otherwise ignore or misuse."""
    where = f'{handler_name(func)} (@consumer of queue {queue.name!r})'
    for key, value in options.items():
        if key not in CONSUMER_OPTIONS:
            close = difflib.get_close_matches(key, CONSUMER_OPTIONS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f'; known: {", ".join(CONSUMER_OPTIONS)}'
            raise UsageError(f'{where}: unknown option {key!r}{hint}')
        if key in ('prefetch', 'batch', 'rate') and value is None:
            continue  # the defaults: 4 x concurrency; one message per call; no limit
        if key == 'rate':
            check_rate(where, value)
            continue
        if key in _MIN_INT:
            if not isinstance(value, int) or isinstance(value, bool) or value < _MIN_INT[key]:
                raise DeclarationError(f'{handler_name(func)}: {key} must be an integer >= {_MIN_INT[key]}, '
                                       f'got {value!r}')
        elif key in ('retry_delay', 'batch_wait'):
            _check_seconds(func, key, value, zero_ok=True)
        elif not isinstance(value, bool):  # autoack
            raise DeclarationError(f'{handler_name(func)}: {key} must be True or False, got {value!r}')


def _check_batch_handler(func: Callable[..., Any], dto_class: type[Any] | None) -> None:
    """A batch handler takes the list of models as its one argument (no 1.x keywords, no DTO, no
    ``message``: a batch is many messages)."""
    style = CallStyle.of(func)
    if style.legacy or not style.positional or style.message or dto_class is not None:
        raise DeclarationError(f'{handler_name(func)}: a batch consumer takes one parameter, the list of '
                               'messages (no **kwargs, dto_class or message)')


class _BatchConsumerDecorator(_ConsumerBase, Generic[T]):
    """``@consumer(queue, batch=100)``: the handler takes a list of the queue's model."""

    def __call__(self, func: Callable[[S, list[T]], Awaitable[None]]) -> Callable[[S, list[T]], Awaitable[None]]:
        return cast(Callable[[S, list[T]], Awaitable[None]], self._bind(func))


class _ConsumerDecorator(_ConsumerBase, Generic[T]):
    """``@consumer(queue)``: the handler takes the queue's model, or 1.x keywords."""

    @overload
    def __call__(self, func: Callable[Concatenate[S, T, P], Awaitable[A]]
                 ) -> Callable[Concatenate[S, T, P], Awaitable[A]]: ...

    @overload
    def __call__(self, func: KwargsHandler) -> KwargsHandler: ...

    @overload  # 1.x declarations carry no types: 1.x handlers may name payload fields as parameters
    def __call__(self: _ConsumerDecorator[JsonPayload], func: AnyHandler) -> AnyHandler: ...

    def __call__(self, func: Any) -> Any:
        return self._bind(func)


class _DtoConsumerDecorator(_ConsumerBase, Generic[D]):
    """``@consumer(queue, dto_class=D)``: the handler takes a ``D``, or 1.x keywords with ``dto: D``."""

    @overload
    def __call__(self, func: Callable[Concatenate[S, D, P], Awaitable[A]]
                 ) -> Callable[Concatenate[S, D, P], Awaitable[A]]: ...

    @overload
    def __call__(self, func: _DtoKwargsHandler[D]) -> _DtoKwargsHandler[D]: ...

    def __call__(self, func: Any) -> Any:
        return self._bind(func)


class _LooseDecorator:
    """For 1.x ``dto_class`` consumers: the DTO may arrive under any keyword name."""

    def __init__(self, inner: _ConsumerBase) -> None:
        self.inner = inner

    def __call__(self, func: AnyHandler) -> AnyHandler:
        return cast(AnyHandler, self.inner._bind(func))


@overload
def consumer(queue: Queue[T], timeout: float = 60, dto_class: None = None, dto_name: None = None, *,
             concurrency: int = DEFAULT_CONCURRENCY, prefetch: int | None = None,
             max_retries: int = DEFAULT_MAX_RETRIES, retry_delay: float = DEFAULT_RETRY_DELAY,
             autoack: bool = True, batch: None = None, rate: str | Rate | None = None) -> _ConsumerDecorator[T]: ...


@overload
def consumer(queue: Queue[T], timeout: float = 60, dto_class: None = None, dto_name: None = None, *,
             batch: int, batch_wait: float = DEFAULT_BATCH_WAIT, concurrency: int = 1,
             prefetch: int | None = None, max_retries: int = DEFAULT_MAX_RETRIES,
             retry_delay: float = DEFAULT_RETRY_DELAY,
             rate: str | Rate | None = None) -> _BatchConsumerDecorator[T]: ...


@overload
def consumer(queue: Queue[Any], timeout: float = 60, *, dto_class: type[D], dto_name: None = None,
             concurrency: int = DEFAULT_CONCURRENCY, prefetch: int | None = None,
             max_retries: int = DEFAULT_MAX_RETRIES, retry_delay: float = DEFAULT_RETRY_DELAY,
             autoack: bool = True, rate: str | Rate | None = None) -> _DtoConsumerDecorator[D]: ...


@overload
def consumer(queue: Queue[Any], timeout: float = 60, *, dto_class: type[D], dto_name: str,
             concurrency: int = DEFAULT_CONCURRENCY, prefetch: int | None = None,
             max_retries: int = DEFAULT_MAX_RETRIES, retry_delay: float = DEFAULT_RETRY_DELAY,
             autoack: bool = True, rate: str | Rate | None = None) -> _LooseDecorator: ...


def consumer(queue: Queue[Any], timeout: float = 60, dto_class: type[Any] | None = None,
             dto_name: str | None = None,
             **options: Any) -> (_ConsumerDecorator[Any] | _BatchConsumerDecorator[Any] | _DtoConsumerDecorator[Any]
                                 | _LooseDecorator):
    """Consume messages of ``queue``; one handler per queue. Options: ``concurrency`` (handlers
    running at once), ``prefetch`` (messages fetched ahead, default 4 x concurrency), ``max_retries``
    (before dead-lettering), ``retry_delay`` (backoff base, s) and ``autoack`` (1.x: False leaves the
    ack to the handler). ``batch=N`` hands the handler a list of up to N messages, what came within
    ``batch_wait`` seconds (see ``BatchFailed``). ``rate='100/s'`` (``/m``, ``/h``, or a ``Rate``)
    limits how many messages every consumer of the queue takes, together. Any other option is a
    TypeError naming the handler, raised when decorating; the runtime takes ``**options`` only to
    name the handler in that error."""
    if not isinstance(queue, Queue):
        raise UsageError(f'@consumer needs a Queue declaration, got {queue!r}')
    args = (queue, timeout, dto_class, dto_name, options)
    if options.get('batch') is not None and dto_class is None:
        return _BatchConsumerDecorator(*args)
    if dto_class is None:
        return _ConsumerDecorator(*args)
    decorator: _DtoConsumerDecorator[Any] = _DtoConsumerDecorator(*args)
    return _LooseDecorator(decorator) if dto_name is not None else decorator


Task = TypeVar('Task', bound=Callable[[Any], Awaitable[Any]])
Hook = TypeVar('Hook', bound=Callable[[Any], Any])


def periodic(period: float, timeout: float = 1, start_after: float = 0) -> Callable[[Task], Task]:
    """Run the method every ``period`` seconds, each run bounded by ``timeout``."""
    def decorator(func: Task) -> Task:
        _check_async(func, 'periodic')
        attach(func, PeriodicSpec(period=_check_seconds(func, 'period', period),
                                   timeout=_check_seconds(func, 'timeout', timeout),
                                   start_after=_check_seconds(func, 'start_after', start_after, zero_ok=True)))
        return func
    return decorator


def cron(spec: str, timeout: float = 1, tz: tzinfo | None = None) -> Callable[[Task], Task]:
    """Run the method on a cron schedule (croniter syntax), in ``tz`` when given, else UTC."""
    def decorator(func: Task) -> Task:
        _check_async(func, 'cron')
        if not isinstance(spec, str) or not croniter.is_valid(spec):
            raise DeclarationError(f'{handler_name(func)}: invalid cron spec {spec!r}')
        attach(func, CronSpec(spec=spec, timeout=_check_seconds(func, 'timeout', timeout), tz=tz))
        return func
    return decorator


def on(label: str) -> Callable[[Hook], Hook]:
    """A lifecycle hook (``pre_start``, ``post_start``, ``pre_stop``) or a long-running ``server``."""
    if label not in HOOK_LABELS:
        raise DeclarationError(f'@on: unknown hook label {label!r}; use one of {", ".join(HOOK_LABELS)}')

    def decorator(func: Hook) -> Hook:
        attach(func, HookSpec(label=label))
        return func
    return decorator
