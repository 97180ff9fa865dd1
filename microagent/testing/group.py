"""A test kit for users' own tests: run agents on an isolated backend and await what they do.

``async with TestGroup(AgentA, AgentB) as group:`` builds each agent on its own bus and broker
over a private ``MemoryHub`` (or over a real server: ``dsn='redis://...'``), starts them, and stops
and closes everything on exit. Nothing is mocked: messages travel through the real engines and
transports; the kit only wraps each agent's bound handlers (never the user's class) to count what
they handled, and the transports' sending calls to record what was sent. pytest is not imported
here: the fixtures live in ``microagent.testing.pytest_plugin``.
"""
from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast, overload

import msgspec

from microagent.agent import MicroAgent
from microagent.backends import UnknownScheme, backend_for
from microagent.backends.memory import MemoryBroker, MemoryHub, MemorySignalBus
from microagent.broker import AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.errors import MicroAgentError, UsageError
from microagent.message import REQUEST_ID, Envelope
from microagent.queue import Queue
from microagent.signal import Signal
from microagent.transport import BrokerTransport, BusTransport, DeadLetter, Deliver, DeliverReply, QueueDepth

__all__ = ['ExpectationFailed', 'GroupFactory', 'HandlerProbe', 'NotInGroup', 'Sent', 'SentLog', 'TestGroup']

A = TypeVar('A', bound=MicroAgent)
M = TypeVar('M')
T = TypeVar('T')
DEFAULT_TIMEOUT = 5.0


class ExpectationFailed(AssertionError):
    """An awaited expectation did not come true in time; the message says what was seen."""


class NotInGroup(MicroAgentError, LookupError):
    """The agent or handler asked for is not (or not only once) in the group; the message lists what is."""


@dataclass
class HandlerProbe(Generic[M]):
    """What one agent's handler was called with, in order, and how each call ended."""

    key: str
    models: list[M] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    running: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def handled(self) -> int:
        """Calls that ended, by returning or by raising."""
        return len(self.results) + len(self.errors)

    async def wait(self, count: int = 1, timeout: float = DEFAULT_TIMEOUT) -> list[M]:
        """The models of the first ``count`` calls, once that many have ended."""
        try:
            async with asyncio.timeout(timeout):
                while self.handled < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise ExpectationFailed(
                f'handler {self.key} handled {self.handled} of {count} messages within {timeout}s; '
                f'got {self.models!r}' + (f'; failures: {self.errors!r}' if self.errors else '')) from None
        return self.models[:count]

    def _wrap(self, handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def probed(*args: Any, **kwargs: Any) -> Any:
            model: M = args[0] if args else cast(M, kwargs)  # positional: the model; 1.x style: the fields
            self.models.append(model)
            self.running += 1
            try:
                result = await handler(*args, **kwargs)
            except BaseException as exc:
                self.errors.append(exc)
                raise
            else:
                self.results.append(result)
                return result
            finally:
                self.running -= 1
                self._changed.set()
        return probed


@dataclass(frozen=True)
class Sent:
    """One message as a transport was asked to send it: ``kind`` is ``signal``, ``queue``,
    ``exchange`` or ``answer`` (an RPC reply, ``name`` the signal asked, when this group sent it)."""

    kind: str
    name: str
    body: bytes
    headers: Mapping[str, str] | None
    sender: str = ''

    def json(self) -> Any:
        """The body as plain JSON values."""
        return msgspec.json.decode(self.body)


class SentLog:
    """Everything the group's buses and brokers sent, in order; typed views by declaration."""

    def __init__(self) -> None:
        self.items: list[Sent] = []
        self._requests: dict[str, str] = {}  # RPC request id -> signal name

    def add(self, kind: str, name: str, envelope: Envelope, sender: str = '') -> None:
        headers = envelope.headers
        if kind == 'signal' and headers and REQUEST_ID in headers:
            self._requests[headers[REQUEST_ID]] = name
        if kind == 'answer' and headers and REQUEST_ID in headers:
            name = self._requests.get(headers[REQUEST_ID], name)
        self.items.append(Sent(kind, name, envelope.body, headers, sender))

    def signals(self, signal: Signal[T, Any]) -> list[T]:
        """The payloads sent as ``signal`` (RPC requests included), decoded by its model."""
        return [signal.codec.decode(s.body) for s in self.items if s.kind == 'signal' and s.name == signal.name]

    def messages(self, queue: Queue[T]) -> list[T]:
        """The messages sent to ``queue`` (directly, not through an exchange), decoded by its model."""
        return [queue.codec.decode(s.body) for s in self.items if s.kind == 'queue' and s.name == queue.name]

    def answers(self, signal: Signal[Any, T]) -> list[dict[str, T]]:
        """The RPC answers given to ``signal`` requests sent through this group, ``{"Agent.method": value}``."""
        codec = signal.answer_codec
        found = []
        for s in self.items:
            if s.kind == 'answer' and s.name == signal.name:
                raw = msgspec.json.decode(s.body, type=dict[str, msgspec.Raw])
                found.append({k: codec.decode(bytes(v)) if codec else msgspec.json.decode(v) for k, v in raw.items()})
        return found


class _RecordingBusTransport:
    """A bus transport that records what it publishes and replies, then does it."""

    def __init__(self, inner: BusTransport, log: SentLog) -> None:
        self._inner = inner
        self._log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def reply_to(self) -> str:
        return self._inner.reply_to

    async def publish(self, name: str, sender: str, envelope: Envelope) -> None:
        self._log.add('signal', name, envelope, sender)
        await self._inner.publish(name, sender, envelope)

    async def subscribe(self, names: Collection[str], deliver: Deliver) -> None:
        await self._inner.subscribe(names, deliver)

    async def receive_replies(self, deliver: DeliverReply) -> None:
        await self._inner.receive_replies(deliver)

    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        self._log.add('answer', '', envelope)
        await self._inner.reply(reply_to, envelope)

    async def close(self) -> None:
        await self._inner.close()


class _RecordingBrokerTransport:
    """A broker transport that records what it puts and publishes; the rest is the inner one's."""

    def __init__(self, inner: BrokerTransport[Any], log: SentLog) -> None:
        self._inner = inner
        self._log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def put(self, queue: Queue[Any], envelopes: Sequence[Envelope], *, delay: float = 0.0,
                  **options: Any) -> None:
        for envelope in envelopes:
            self._log.add('queue', queue.name, envelope)
        await self._inner.put(queue, envelopes, delay=delay, **options)

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope) -> int:
        self._log.add('exchange', exchange, envelope)
        return await self._inner.publish(exchange, routing_key, envelope)


def _backend(dsn: str | None, hub: MemoryHub | None, prefix: str) -> tuple[AbstractSignalBus, AbstractQueueBroker]:
    """A new bus and broker: on ``hub`` (the embedded default), or from the registry's backend of the DSN."""
    if hub is not None:
        return MemorySignalBus(prefix=prefix, hub=hub), MemoryBroker(hub=hub)
    assert dsn is not None
    try:
        backend = backend_for(dsn)
    except UnknownScheme as exc:
        raise UsageError(f'TestGroup: {exc}') from None
    bus: AbstractSignalBus = backend.load('bus')(dsn, prefix=prefix)
    broker: AbstractQueueBroker = backend.load('broker')(dsn)
    return bus, broker


class TestGroup:
    """Agents running for a test, each on its own bus and broker over one private backend.

    ``group[AgentA]`` is the running agent, ``group.bus``/``group.broker`` the test's own (to send
    from), ``group.handler(AgentA.on_x)`` a probe of that handler, ``group.sent`` what was sent.
    With ``dsn`` the agents run on that server instead (signals under a fresh ``prefix``; queues
    keep their declared names, so a test gives them unique ones)."""

    __test__ = False  # not a pytest test class

    def __init__(self, *agents: type[MicroAgent], settings: dict[str, Any] | None = None,
                 dsn: str | None = None, prefix: str | None = None) -> None:
        self.agent_classes = agents
        self.settings = settings
        self.dsn = dsn
        self.prefix = prefix or ('PUBSUB' if dsn is None else f'TEST{uuid.uuid4().hex[:8]}')
        self.hub = MemoryHub() if dsn is None or dsn == 'memory://' else None
        self.sent = SentLog()
        #: the real transports of every bus and broker built here (they stay after ``close``):
        #: what a cleanup of a real server asks for the queues and exchanges they declared
        self.transports: list[BusTransport | BrokerTransport[Any]] = []
        self.agents: list[MicroAgent] = []
        self.bus, self.broker = self._connect()
        self._probes: dict[Callable[..., Any], list[HandlerProbe[Any]]] = {}
        self._queue_probes: dict[str, list[HandlerProbe[Any]]] = {}
        self._connections: list[AbstractSignalBus | AbstractQueueBroker] = [self.bus, self.broker]

    def _connect(self) -> tuple[AbstractSignalBus, AbstractQueueBroker]:
        bus, broker = _backend(self.dsn, self.hub, self.prefix)
        self.transports += [bus.transport, broker.transport]
        bus.transport = _RecordingBusTransport(bus.transport, self.sent)
        broker.transport = cast('BrokerTransport[Any]', _RecordingBrokerTransport(broker.transport, self.sent))
        return bus, broker

    def _build(self, cls: type[A]) -> A:
        bus, broker = self._connect()
        self._connections += [bus, broker]
        agent = cls(bus=bus, broker=broker, settings=dict(self.settings) if self.settings is not None else None)
        for receiver in agent.receivers:
            receiver.handler = self._probe(receiver.key, receiver.handler)._wrap(receiver.handler)
        for consumer in agent.consumers:
            probe = self._probe(consumer.key, consumer.handler)
            self._queue_probes.setdefault(consumer.queue.name, []).append(probe)
            consumer.handler = probe._wrap(consumer.handler)
        return agent

    def _probe(self, key: str, handler: Callable[..., Awaitable[Any]]) -> HandlerProbe[Any]:
        probe: HandlerProbe[Any] = HandlerProbe(key)
        self._probes.setdefault(getattr(handler, '__func__', handler), []).append(probe)
        return probe

    async def __aenter__(self) -> Self:
        try:
            for cls in self.agent_classes:
                agent = self._build(cls)
                self.agents.append(agent)
                await agent._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the agents (last started first), then close every connection."""
        errors: list[BaseException] = []
        for agent in reversed(self.agents):
            try:
                await agent.stop()
            except Exception as error:
                errors.append(error)
        results = await asyncio.gather(*(c.close() for c in self._connections), return_exceptions=True)
        errors += [r for r in results if isinstance(r, BaseException)]
        self._connections.clear()
        if errors:
            raise errors[0]

    def __getitem__(self, cls: type[A]) -> A:
        for agent in self.agents:
            if type(agent) is cls:
                return agent
        raise NotInGroup(f'{cls.__name__} is not in this group: {[type(a).__name__ for a in self.agents]}')

    @overload
    def handler(self, method: Callable[[Any, M], Awaitable[Any]]) -> HandlerProbe[M]: ...
    @overload
    def handler(self, method: Callable[..., Awaitable[Any]]) -> HandlerProbe[Any]: ...

    def handler(self, method: Callable[..., Awaitable[Any]]) -> HandlerProbe[Any]:
        """The probe of a receiver or consumer, named by its method: ``group.handler(Agent.on_x)``."""
        func = getattr(method, '__func__', method)
        probes = self._probes.get(func)
        if not probes:
            known = sorted(p.key for found in self._probes.values() for p in found)
            raise NotInGroup(f'{getattr(method, "__qualname__", method)!r} is no receiver or consumer of an agent '
                           f'in this group; the handlers are {known}')
        if len(probes) > 1:
            raise NotInGroup(f'{probes[0].key} runs in {len(probes)} agents here: ask group[Agent] for one')
        return probes[0]

    async def _until(self, check: Callable[[], Awaitable[bool]], timeout: float, failure: Callable[[], Awaitable[str]]
                     ) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not await check():  # noqa: ASYNC110 - server state: nothing to await on a real backend
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise ExpectationFailed(await failure()) from None

    def _busy(self, queue: Queue[Any]) -> int:
        return sum(probe.running for probe in self._queue_probes.get(queue.name, []))

    async def depth(self, queue: Queue[Any]) -> QueueDepth:
        """``queue``'s depth as the group's brokers see it, the largest of each figure (a backend
        may know only its own delayed and in-flight messages, as RabbitMQ's does)."""
        brokers = [c for c in self._connections if isinstance(c, AbstractQueueBroker)] or [self.broker]
        depths = await asyncio.gather(*(broker.queue_depth(queue.name) for broker in brokers))
        return QueueDepth(max(d.ready for d in depths), max(d.delayed for d in depths),
                          max(d.in_flight for d in depths))

    async def _unfinished(self, queue: Queue[Any]) -> int:
        """Messages the group sent to ``queue`` that no consumer here has yet handled successfully
        nor dead-lettered. The depth alone can miss one on its way (RabbitMQ counts neither a message
        moving from a delay queue nor one delivered but not yet read); 0 when no agent here consumes it."""
        probes = self._queue_probes.get(queue.name)
        if not probes:
            return 0
        sent = sum(1 for item in self.sent.items if item.kind == 'queue' and item.name == queue.name)
        done = sum(len(probe.results) for probe in probes)
        if done >= sent:
            return 0
        return sent - done - await self.broker.dead_letter_count(queue.name)

    async def wait_queue_empty(self, queue: Queue[Any], timeout: float = DEFAULT_TIMEOUT) -> None:
        """Until ``queue`` is settled: nothing ready, no retry or delayed send pending, nothing in
        flight, no consumer here handling one of its messages, and every message the group sent to
        it handled or dead-lettered."""
        async def settled() -> bool:
            return (not self._busy(queue) and (await self.depth(queue)).total == 0
                    and await self._unfinished(queue) <= 0)

        async def failure() -> str:
            return (f'queue {queue.name!r} not settled within {timeout}s: {await self.depth(queue)}; '
                    f'{self._busy(queue)} being handled; {max(await self._unfinished(queue), 0)} sent here and '
                    'not yet handled nor dead-lettered')
        await self._until(settled, timeout, failure)

    async def wait_dead_letters(self, queue: Queue[Any], count: int = 1, timeout: float = DEFAULT_TIMEOUT
                                ) -> list[DeadLetter]:
        """Until ``queue`` has at least ``count`` dead letters; returns them."""
        async def enough() -> bool:
            return await self.broker.dead_letter_count(queue.name) >= count

        async def failure() -> str:
            letters = await self.broker.dead_letters(queue.name)
            return (f'queue {queue.name!r} has {len(letters)} of {count} dead letters within {timeout}s: '
                    f'{[letter.reason for letter in letters]}')
        await self._until(enough, timeout, failure)
        return await self.broker.dead_letters(queue.name, max(count, 100))


class GroupFactory:
    """Builds ``TestGroup``s on one backend (``dsn``, None for memory): the ``agent_group`` fixture."""

    def __init__(self, dsn: str | None = None) -> None:
        self.dsn = dsn

    def __call__(self, *agents: type[MicroAgent], settings: dict[str, Any] | None = None,
                 prefix: str | None = None) -> TestGroup:
        return TestGroup(*agents, settings=settings, dsn=self.dsn, prefix=prefix)
