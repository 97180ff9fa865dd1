"""MicroAgent: finds its handlers when the class is defined, binds them to a bus and a broker,
runs timers and servers, and stops gracefully."""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

from microagent.broker import AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.contract.info import Described, agent_info
from microagent.declaration import check_group_name, group_name_of
from microagent.errors import DeclarationError, MissConfig, ServerInterrupt, UsageError
from microagent.handlers import (
    Consumer,
    ConsumerSpec,
    CronSpec,
    Grouping,
    HookSpec,
    PeriodicSpec,
    Receiver,
    ReceiverSpec,
    call_maybe_async,
    specs_of,
)
from microagent.message import Conversation, reset_current_message, set_current_message
from microagent.middleware import MiddlewareLike, added
from microagent.ops.endpoints import agent_endpoints
from microagent.ops.http import start_http
from microagent.ratelimit import Limit, LocalLimiter, Rate
from microagent.readiness import PING_TIMEOUT
from microagent.sends import Sendable, SendKind, UndeclaredSend, declared_sends, kind_of, reset_sender, set_sender
from microagent.timer import Timer, run_cron, run_periodic

DEFAULT_GRACE = 10.0
#: beyond the grace, what a runner (marun, AppAgents) allows for pre_stop hooks and closing connections
STOP_MARGIN = 5.0


def _in_a_conversation(agent: MicroAgent, func: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """A periodic or cron run is a conversation of its own: the messages one run sends share a
    correlation id and a trace (a fresh message is current while it runs, read only if it sends).
    The agent is the sender of what it sends (checked against its ``sends``)."""
    async def run() -> Any:
        token = set_current_message(Conversation())
        sender = set_sender(agent)
        try:
            return await func()
        finally:
            reset_sender(sender)
            reset_current_message(token)
    return run


async def _serve_as(agent: MicroAgent, server: Callable[[], Any]) -> Any:
    """Run a server hook with ``agent`` as the sender of what it sends (the task's own context)."""
    set_sender(agent)
    return await call_maybe_async(server)


def _merged_sends(cls: type[MicroAgent]) -> tuple[tuple[Sendable, ...], frozenset[tuple[SendKind, str]] | None]:
    """The ``sends`` of the class and its bases, in declaration order; None: no class declares any."""
    items: dict[int, Sendable] = {}
    declared = False
    for klass in reversed(cls.__mro__):
        if 'sends' in vars(klass) and klass is not MicroAgent:
            declared = True
            for item in declared_sends(cls.__qualname__, vars(klass)['sends']):
                items.setdefault(id(item), item)
    merged = tuple(items.values())
    if not declared:
        return merged, None
    return merged, frozenset((kind, item.name) for item in merged if (kind := kind_of(item)) is not None)


class MicroAgent(Described):
    """A container of receivers, consumers, periodic/cron tasks, hooks and servers.

    Subclass it and decorate methods; ``MicroAgent(bus=..., broker=..., log=..., settings=...)``.
    """

    _specs: ClassVar[dict[str, list[Any]]] = {}
    #: the signals, queues and exchanges the agent sends (and calls); subclasses extend it
    sends: ClassVar[tuple[Sendable, ...]] = ()
    #: True: sending something not in ``sends`` raises ``UndeclaredSend`` instead of warning once
    strict_sends: ClassVar[bool] = False
    _declared_sends: ClassVar[frozenset[tuple[SendKind, str]] | None] = None
    #: the default group of its receivers (``@receiver(group=...)``): a name, True for the agent's
    #: name, None for broadcast; ``MicroAgent(group=...)`` and a marun entry's ``group`` set it too
    group: str | bool | None = None
    _serving: _Serving | None = None  # set while serve() runs

    log: logging.Logger
    bus: AbstractSignalBus
    broker: AbstractQueueBroker
    settings: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs: dict[str, list[Any]] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                found = specs_of(value)
                if found:
                    specs[attr] = found
                elif attr in specs:
                    del specs[attr]  # overridden without decorators
        queues: dict[str, str] = {}
        for attr, found in specs.items():
            for spec in found:
                if isinstance(spec, ConsumerSpec):
                    other = queues.setdefault(spec.queue.name, attr)
                    if other != attr:
                        raise DeclarationError(f'{cls.__qualname__}: queue {spec.queue.name!r} is consumed by both '
                                               f'{other} and {attr}; a queue has one consumer per agent')
        cls._specs = specs
        cls.sends, cls._declared_sends = _merged_sends(cls)

    def __init__(self, bus: AbstractSignalBus | None = None, broker: AbstractQueueBroker | None = None,
                 log: logging.Logger | None = None, settings: dict[str, Any] | None = None, *,
                 middlewares: Sequence[MiddlewareLike] = (), name: str | None = None,
                 group: str | bool | None = None) -> None:
        self.log = log or logging.getLogger(f'microagent.{type(self).__name__}')
        #: what ``group=True`` names the group: the marun entry's name, else the class's qualified name
        self.agent_name = name or type(self).__qualname__
        if group is not None:
            self.group = group
        if isinstance(self.group, str):
            check_group_name(self.group, f'{type(self).__qualname__}.group')
        self.settings = settings if settings is not None else {}
        #: wrap this agent's handlers (``use``); they wrap its sends too, through its bus and broker
        self.middlewares: tuple[MiddlewareLike, ...] = ()
        self.receivers: list[Receiver] = []
        self.consumers: list[Consumer] = []
        self.periodic_tasks: list[tuple[str, PeriodicSpec]] = []
        self.cron_tasks: list[tuple[str, CronSpec]] = []
        self.hooks: dict[str, list[Callable[[], Any]]] = {}
        for attr, found in self._specs.items():
            method = getattr(self, attr)
            for spec in found:
                self._bind_spec(attr, method, spec)
        if bus is not None:
            self.bus = bus
        elif self.receivers:
            raise MissConfig(f'{type(self).__name__} has receivers but no bus')
        if broker is not None:
            self.broker = broker
        elif self.consumers:
            raise MissConfig(f'{type(self).__name__} has consumers but no broker')
        self._timers: list[Timer] = []
        self._background: list[asyncio.Task[Any]] = []
        self._servers: list[asyncio.Task[Any]] = []
        self._bound_receivers: list[Receiver] = []  # bound, or being bound: what stop() undoes
        self._bound_consumers: list[Consumer] = []
        self._started = False
        self._warned_sends: set[tuple[SendKind, str]] = set()
        if middlewares:
            self.use(*middlewares)

    def use(self, *middlewares: MiddlewareLike) -> Self:
        """Wrap this agent's receivers, consumers, periodic and cron runs in ``middlewares`` (after
        those it has), and what it sends: they are added to its bus and broker, once each."""
        self.middlewares = added(self.middlewares, middlewares)
        for engine in (getattr(self, 'bus', None), getattr(self, 'broker', None)):
            if engine is not None:
                engine.use(*middlewares)
        return self

    def limit(self, name: str, rate: str | Rate, *, count: int = 1) -> Limit:
        """``async with self.limit('smtp', '10/s'):`` runs its body once ``count`` grant(s) of the
        limit ``name`` are taken, waiting while it is over ``rate``; the limit is shared through the
        agent's broker (on Redis by every process of the fleet), else kept in this process."""
        broker = getattr(self, 'broker', None)
        if isinstance(broker, AbstractQueueBroker):
            return Limit(broker.limiter, name, rate, count)
        limiter = self.__dict__.get('_limiter')
        if limiter is None:
            limiter = self.__dict__['_limiter'] = LocalLimiter()
        return Limit(limiter, name, rate, count)

    def _check_send(self, kind: SendKind, name: str) -> None:
        """What ``sends.check_send`` asks: an undeclared send warns once per name, or raises if strict."""
        declared = self._declared_sends
        if declared is None or (kind, name) in declared:
            return
        cls = type(self).__name__
        where = f'{cls} sends {kind} {name!r}, which is not in {cls}.sends'
        if self.strict_sends:
            raise UndeclaredSend(f'{where} (strict_sends is set)')
        if (kind, name) not in self._warned_sends:
            self._warned_sends.add((kind, name))
            self.log.warning('%s: declare it so info(), AsyncAPI and `microagent check` know of it', where)

    def _bind_spec(self, attr: str, method: Any, spec: Any) -> None:
        if isinstance(spec, ReceiverSpec):
            self.receivers.append(Receiver(self, method, spec.signal, spec.timeout, spec.style, spec.concurrency,
                                           self._grouping(spec)))
        elif isinstance(spec, ConsumerSpec):
            self.consumers.append(Consumer(self, method, spec))
        elif isinstance(spec, PeriodicSpec):
            self.periodic_tasks.append((attr, spec))
        elif isinstance(spec, CronSpec):
            self.cron_tasks.append((attr, spec))
        elif isinstance(spec, HookSpec):
            self.hooks.setdefault(spec.label, []).append(method)

    def _grouping(self, spec: ReceiverSpec) -> Grouping | None:
        """The receiver's group: its own choice, else the agent's; None for broadcast."""
        choice = self.group if spec.group is None else spec.group
        if choice is None or choice is False:
            return None
        name = group_name_of(self.agent_name) if choice is True else choice
        return Grouping(name, spec.max_retries, spec.retry_delay, spec.start)

    def __repr__(self) -> str:
        return f'<MicroAgent {type(self).__name__}>'

    async def _run_hooks(self, label: str) -> None:
        hooks = self.hooks.get(label)
        if not hooks:
            return
        sender = set_sender(self)
        try:
            for hook in hooks:
                await call_maybe_async(hook)
        finally:
            reset_sender(sender)

    async def start(self, enable_periodic_tasks: bool = True, enable_receiving_signals: bool = True,
                    enable_consuming_messages: bool = True, enable_servers_running: bool = True) -> None:
        """Start the agent. Like 1.x, this returns only when its servers end, if it has any."""
        await self._start(enable_periodic_tasks, enable_receiving_signals, enable_consuming_messages,
                          enable_servers_running)
        if self._servers:
            await self.wait_servers()

    async def _start(self, enable_periodic_tasks: bool = True, enable_receiving_signals: bool = True,
                     enable_consuming_messages: bool = True, enable_servers_running: bool = True) -> None:
        """Start the parts; if one fails, undo what was started and raise, so a failed start leaves
        nothing bound or running (``pre_stop`` hooks do not run: the agent never started)."""
        try:
            await self._run_hooks('pre_start')
            if enable_receiving_signals:
                await self.bind_receivers(self.receivers)
            if enable_consuming_messages:
                await self.bind_consumers(self.consumers)
            if enable_periodic_tasks:
                self._start_timers()
            if enable_servers_running:
                self._servers = [asyncio.create_task(_serve_as(self, server), name=f'server:{server.__name__}')
                                 for server in self.hooks.get('server', [])]
            self._started = True
            await self._run_hooks('post_start')
        except BaseException:
            self._started = False
            try:
                await self._teardown(0)
            except Exception:
                self.log.exception('Undoing the failed start of %r failed', self)
            raise

    async def wait_servers(self) -> None:
        """Wait until every server ends; a ``ServerInterrupt`` from one stops the agent."""
        try:
            await asyncio.gather(*self._servers)
        except ServerInterrupt as exc:
            self.log.info('Server interrupted: %s', exc)
            await self.stop()

    def _start_timers(self) -> None:
        for attr, pspec in self.periodic_tasks:
            run = _in_a_conversation(self, getattr(self, attr))
            timer = Timer(f'{type(self).__name__}.{attr}', run, pspec.timeout, self.log, kind='periodic', agent=self)
            self._timers.append(timer)
            self._background.append(asyncio.create_task(run_periodic(timer, pspec.period, pspec.start_after)))
        for attr, cspec in self.cron_tasks:
            run = _in_a_conversation(self, getattr(self, attr))
            timer = Timer(f'{type(self).__name__}.{attr}', run, cspec.timeout, self.log, kind='cron', agent=self)
            self._timers.append(timer)
            self._background.append(asyncio.create_task(run_cron(timer, cspec.spec, cspec.tz)))

    async def bind_receivers(self, receivers: list[Receiver]) -> None:
        """Bind signal receivers to bus subscribers."""
        for receiver in receivers:
            self._bound_receivers.append(receiver)
            await self.bus.bind_receiver(receiver)
            self.log.debug('Bound %s to signal %s', receiver.key, receiver.signal.name)

    async def bind_consumers(self, consumers: list[Consumer]) -> None:
        """Bind message consumers to queues."""
        for consumer in consumers:
            self._bound_consumers.append(consumer)
            await self.broker.bind_consumer(consumer)
            self.log.debug('Bound %s to queue %s', consumer.key, consumer.queue.name)

    async def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Run ``pre_stop`` hooks, stop taking work, wait up to ``grace`` s for work under way.

        The hooks are not bounded (as in 1.x); the grace starts after them and is one deadline for
        receivers, consumers and timer runs, which wait for their work at the same time."""
        serving = self._serving
        if serving is not None and asyncio.current_task() is not serving.task:
            await serving.stop_from_elsewhere(grace)  # serve() stops the agent; wait until it has
            return
        if not self._started:
            return
        self._started = False
        try:
            await self._run_hooks('pre_stop')
        finally:
            await self._teardown(grace)

    async def _teardown(self, grace: float) -> None:
        """Undo whatever was started: timers, receivers, consumers, then servers."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        receivers, self._bound_receivers = self._bound_receivers, []
        consumers, self._bound_consumers = self._bound_consumers, []
        timers, self._timers = self._timers, []
        phases: list[Awaitable[None]] = [timer.wait_runs(grace) for timer in timers]
        if receivers:
            phases.append(self.bus.unbind_receivers(receivers, grace))
        if consumers:
            phases.append(self.broker.stop_consumers(consumers, grace))
        try:
            results = await asyncio.gather(*phases, return_exceptions=True)
        finally:
            await self._stop_servers()
        errors = [result for result in results if isinstance(result, BaseException)]
        for error in errors[1:]:
            self.log.error('Stopping %r failed too', self, exc_info=error)
        if errors:
            raise errors[0]

    async def _stop_servers(self) -> None:
        current = asyncio.current_task()
        servers = [server for server in self._servers if server is not current]
        self._servers = []
        for server in servers:
            server.cancel()
        await asyncio.gather(*servers, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self._start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def serve(self) -> None:
        """Start, run until SIGINT/SIGTERM or ``stop(grace)`` from elsewhere, then stop gracefully.

        ``start()`` returns at once without servers; a service needs something to wait on. No
        parameters: a 1.x agent whose server hook is named ``serve`` still overrides it soundly."""
        await MicroAgent._serve(self, DEFAULT_GRACE)

    async def serve_http(self, address: str, grace: float = DEFAULT_GRACE, *, token: str | None = None) -> None:
        """``serve()``, with ``/health``, ``/ready``, ``/metrics``, ``/asyncapi.json`` and ``/docs``
        on ``address`` (HOST:PORT; ``microagent.ops.http``) from before the start until after the stop;
        with a ``token`` (or ``$MICROAGENT_HTTP_TOKEN``) all but ``/health`` and ``/ready`` ask for it."""
        await MicroAgent._serve(self, grace, address, token)

    async def _serve(self, grace: float, http: str | None = None, token: str | None = None) -> None:
        """Serve; a signal stops with ``grace``. Signal handlers are installed only while serving
        and the previous ones are put back after."""
        if self._serving is not None:
            raise UsageError(f'{self!r} is already serving')
        probes = None
        if http is not None:  # first: a port in use fails before anything is connected
            probes = await start_http(http, agent_endpoints({type(self).__name__: self}, token))
        serving = self._serving = _Serving(grace)
        loop = asyncio.get_running_loop()
        installed = _install_stop_handlers(loop, serving.requested.set)
        try:
            await self._start()
            waiters: list[asyncio.Task[Any]] = [asyncio.create_task(serving.requested.wait(), name='serve:stop')]
            if self._servers:
                waiters.append(asyncio.create_task(self.wait_servers(), name='serve:servers'))
            try:
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
            for task in done:
                task.result()  # a server that failed is raised, after the stop below
        finally:
            try:
                await self.stop(serving.grace)
            finally:
                self._serving = None
                serving.finished.set()
                _restore_stop_handlers(loop, installed)
                if probes is not None:
                    await probes.close()

    def run(self, grace: float = DEFAULT_GRACE, *, http: str | None = None, http_token: str | None = None) -> None:
        """Serve in a new event loop until SIGINT/SIGTERM or ``stop()``: ``asyncio.run(agent.serve())``,
        with ``grace`` for the stop a signal asks for and the HTTP endpoints on ``http`` (HOST:PORT),
        all but the probes behind ``http_token`` when one is given (or ``$MICROAGENT_HTTP_TOKEN``)."""
        asyncio.run(MicroAgent._serve(self, grace, http, http_token))  # even when a subclass has a hook ``serve``

    async def readiness(self, timeout: float = PING_TIMEOUT) -> list[str]:
        """Why this agent is not ready, empty when it is: it is not started (or is stopping), its
        bus or broker does not answer a ping, or a consumer does not fetch (``/ready`` of ``--http``)."""
        if not self._started:
            return [f'{self!r} is not started']
        engines: dict[int, AbstractSignalBus | AbstractQueueBroker] = {}
        for engine in (getattr(self, 'bus', None), getattr(self, 'broker', None)):
            if engine is not None:
                engines.setdefault(id(engine), engine)
        found = await asyncio.gather(*(engine.readiness(timeout) for engine in engines.values()))
        return [problem for problems in found for problem in problems]

    def info(self) -> dict[str, Any]:
        """A JSON-serialisable description of the agent, its channels and their payload schemas."""
        return agent_info(self)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _install_stop_handlers(loop: asyncio.AbstractEventLoop,
                           callback: Callable[[], None]) -> list[tuple[signal.Signals, Any]]:
    """Route SIGINT/SIGTERM to ``callback``; returns what to put back (nothing off the main thread)."""
    installed: list[tuple[signal.Signals, Any]] = []
    if threading.current_thread() is not threading.main_thread():
        return installed
    for signum in _STOP_SIGNALS:
        previous = signal.getsignal(signum)
        try:
            loop.add_signal_handler(signum, callback)
        except (NotImplementedError, RuntimeError):  # no signal support in this loop
            continue
        installed.append((signum, previous))
    return installed


def _restore_stop_handlers(loop: asyncio.AbstractEventLoop,
                           installed: list[tuple[signal.Signals, Any]]) -> None:
    for signum, previous in installed:
        loop.remove_signal_handler(signum)
        signal.signal(signum, previous)


class _Serving:
    """What ``serve()`` waits on: a stop request (a signal or ``stop()``), and its own stop's end."""

    def __init__(self, grace: float) -> None:
        self.task = asyncio.current_task()
        self.grace = grace
        self.requested = asyncio.Event()
        self.finished = asyncio.Event()

    async def stop_from_elsewhere(self, grace: float) -> None:
        if not self.requested.is_set():
            self.grace = grace  # the first stop request's grace is the one serve() uses
        self.requested.set()
        await self.finished.wait()


async def stop_within(agent: MicroAgent, name: str, grace: float, log: logging.Logger) -> bool:
    """``agent.stop(grace)``, abandoned after ``grace`` + ``STOP_MARGIN`` seconds; a failure is
    logged, never raised (a runner stops the others anyway). True when the agent stopped."""
    try:
        async with asyncio.timeout(grace + STOP_MARGIN):
            await agent.stop(grace)
    except TimeoutError:
        log.error('Agent %s did not stop within %.1fs; abandoning its work', name, grace + STOP_MARGIN)
    except Exception:
        log.exception('Agent %s failed while stopping', name)
    else:
        return True
    return False


async def close_engines(engines: Iterable[Any], who: str, log: logging.Logger) -> None:
    """Close each bus and broker once (agents may share one), each within ``STOP_MARGIN`` seconds;
    a failure is logged as ``who``'s."""
    closed: set[int] = set()
    for engine in engines:
        if engine is None or id(engine) in closed:
            continue
        closed.add(id(engine))
        try:
            async with asyncio.timeout(STOP_MARGIN):
                await engine.close()
        except Exception as exc:
            log.warning('%s: closing %r failed: %s', who, engine, exc)
