"""The queue broker engine: at-least-once delivery, written once for every backend.

A backend is a ``BrokerTransport`` (``transport.py``): storage primitives over envelopes (put,
fetch, ack, retry, dead-letter, release, length). This module owns the policy: validate on send and
on receive, build every message's headers, run at most ``concurrency`` handlers per consumer,
acknowledge only after the handler returns, retry with exponential backoff, then dead-letter with
the reason; stop taking work on ``stop`` and wait for in-flight handlers. Every backend call goes
through ``self.transport``; the engine never knows which backend it drives.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Iterable, Mapping
from functools import partial
from itertools import repeat
from typing import Any, Generic, Never, Self, TypeVar, cast, overload

from microagent.consuming import Consuming
from microagent.dsn import hide_password
from microagent.errors import DeclarationError, QueueAttributeError, QueueNotFound, UsageError
from microagent.exchange import Exchange
from microagent.handlers import Consumer
from microagent.limits import check_delay, check_message_size, check_priority
from microagent.message import Envelope, check_user_headers, new_headers, new_headers_many
from microagent.middleware import MiddlewareLike, Sending, SendingKind, active, added, backend_name, wrap
from microagent.payload import DEFAULT_MAX_MESSAGE_SIZE, check_size, encode_json
from microagent.queue import Queue
from microagent.readiness import PING_TIMEOUT, pinged
from microagent.running import Running
from microagent.sends import check_send
from microagent.signing import SignedBrokerTransport, SigningKey
from microagent.transport import BrokerTransport, DeadLetter, Delivery, QueueDepth, SelectDeadLetter

__all__ = ['DEFAULT_MAX_MESSAGE_SIZE', 'AbstractQueueBroker', 'BoundExchange', 'BoundQueue', 'DeadLetter',
           'Delivery', 'QueueDepth']

T = TypeVar('T')


class AbstractQueueBroker(Consuming):
    """The broker engine over a ``BrokerTransport``: ``broker.mailer`` (1.x) or ``broker[mailer]``
    (typed) is a bound queue. Backends subclass it only to build their transport in ``__init__``."""

    fetch_timeout: float = 1.0

    def __init__(self, transport: BrokerTransport[Any], *, dsn: str = '', log: logging.Logger | None = None,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, signing_key: SigningKey | None = None) -> None:
        self.transport = transport
        self.dsn = dsn
        self.uid = uuid.uuid4().hex
        self.log = log or logging.getLogger('microagent.broker')
        self.max_message_size = max_message_size
        self.backend = backend_name(transport)
        #: wrap every send through this broker (``use``); an agent adds its own
        self.middlewares: tuple[MiddlewareLike, ...] = ()
        self._running: dict[str, Running] = {}
        if signing_key is not None:  # every message put signed, every one fetched checked
            self.transport = SignedBrokerTransport(transport, signing_key, self.log)

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {hide_password(self.dsn)}>'

    async def close(self) -> None:
        """Release the transport's connections; the broker may not be used afterwards."""
        await self.transport.close()

    async def ping(self) -> None:
        """One round trip to the server (``transport.ping``); raises when it is unreachable."""
        await self.transport.ping()

    async def readiness(self, timeout: float = PING_TIMEOUT) -> list[str]:
        """Why this broker is not ready, empty when it is: its server does not answer ``ping``
        within ``timeout`` seconds, or a consumer's fetch loop ended or is failing."""
        problems = await pinged(repr(self), self.ping, timeout)
        for name, run in self._running.items():
            if run.loop_task is None or run.loop_task.done():
                problems.append(f'{self!r}: the consumer of queue {name!r} is not running')
            elif run.retrier is not None and run.retrier.failures:
                problems.append(f'{self!r}: fetching from queue {name!r} failed {run.retrier.failures} '
                                'time(s) in a row')
        return problems

    def use(self, *middlewares: MiddlewareLike) -> Self:
        """Wrap every send through this broker in ``middlewares`` too (after those it has)."""
        self.middlewares = added(self.middlewares, middlewares)
        return self

    async def _put(self, kind: SendingKind, queue: Queue[Any], envelopes: list[Envelope], delay: float,
                  **options: Any) -> None:
        """``transport.put``, through the send middlewares."""
        middlewares = active(self.middlewares)
        if not middlewares:
            return await self.transport.put(queue, envelopes, delay=delay, **options)
        sending = Sending(kind, queue.name, self.backend, [cast(dict[str, str], e.headers) for e in envelopes])
        await wrap(middlewares, 'send', sending,
                   partial(self.transport.put, queue, envelopes, delay=delay, **options))()

    async def queue_length(self, name: str) -> int:
        """How many messages wait in the queue ``name`` (by name: for tools that declare nothing)."""
        return await self.transport.length(name)

    async def queue_depth(self, name: str) -> QueueDepth:
        """The queue ``name``'s ready, delayed (retries, delayed sends) and in-flight counts: its
        depth is ready + delayed; it is settled when all three are 0."""
        return await self.transport.depth(name)

    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        return await self.transport.dead_letters(name, limit)

    async def dead_letter_count(self, name: str) -> int:
        return await self.transport.dead_letter_count(name)

    async def requeue_dead_letters(self, name: str, select: SelectDeadLetter | None = None) -> int:
        """Put dead letters back on their queue as attempt 1: all, or those ``select`` picks."""
        if select is None:
            return await self.transport.requeue_dead_letters(name)
        return await self.transport.remove_dead_letters(name, select, requeue=True)

    async def purge_dead_letters(self, name: str, select: SelectDeadLetter | None = None) -> int:
        """Delete dead letters for good: all, or those ``select`` picks; return how many."""
        return await self.transport.remove_dead_letters(name, select or _every, requeue=False)

    async def queue_exists(self, name: str) -> bool:
        """Whether queue ``name`` is declared or holds anything (by name: for tools)."""
        return await self.transport.exists(name)

    # bound queues

    def __getattr__(self, name: str) -> Any:
        """1.x access by name, as untyped as the names: ``broker.mailer`` is a BoundQueue, and
        (1.9) ``broker.push`` a BoundExchange when ``push`` is a declared exchange, not a queue."""
        if name.startswith('_'):
            raise AttributeError(name)
        try:
            queue = Queue.get(name)
        except QueueNotFound as exc:  # also an AttributeError: hasattr(broker, name) is False
            if name in Exchange.get_all():
                return BoundExchange(self, Exchange.get(name))
            raise QueueAttributeError(str(exc), name, self) from None
        return BoundQueue(self, queue)

    @overload
    def __getitem__(self, queue: Queue[T]) -> BoundQueue[T]: ...
    @overload
    def __getitem__(self, queue: str) -> Any: ...

    def __getitem__(self, queue: Queue[Any] | str) -> Any:
        """``broker[mailer]``, typed by the declaration; ``broker['mailer']`` by name, as untyped as
        ``broker.mailer`` (a ``BoundExchange`` for a declared exchange's name). ``QueueNotFound`` (a
        ``LookupError``) names a queue nobody declared."""
        if isinstance(queue, str):
            if queue not in Queue.get_all() and queue in Exchange.get_all():
                return BoundExchange(self, Exchange.get(queue))
            return BoundQueue(self, Queue.get(queue))
        if not isinstance(queue, Queue):
            raise UsageError(f'broker[...] takes a Queue or the name of one, got {queue!r}')
        return BoundQueue(self, queue)

    async def publish(self, exchange: str, payload: Any, routing_key: str = '', *,
                      headers: Mapping[str, str] | None = None) -> int:
        """Publish to an exchange: every queue bound to it on this broker's hub or server (and
        matching ``routing_key`` on a topic exchange) gets the message, validated against the model
        of each such queue this process declares. Returns how many queues (at least 1 where the
        server does not say); ``QueueNotFound`` when none is bound."""
        check_send('exchange', exchange)
        local = [queue for queue in Queue.get_all().values() if queue.routes(exchange, routing_key)]
        envelope = Envelope(self.encode_for(exchange, local, payload), new_headers(headers))
        check_message_size('exchange', exchange, envelope.body, envelope.headers, self.max_message_size)
        middlewares = active(self.middlewares)
        if not middlewares:
            return await self.transport.publish(exchange, routing_key, envelope)
        sending = Sending('exchange', exchange, self.backend, [cast(dict[str, str], envelope.headers)])
        count: int = await wrap(middlewares, 'send', sending,
                                partial(self.transport.publish, exchange, routing_key, envelope))()
        return count

    def encode_for(self, exchange: str, queues: Iterable[Queue[Any]], payload: Any) -> bytes:
        """The payload validated against every given queue; plain JSON if there is none."""
        data: bytes | None = None
        for queue in queues:
            data = self.encode(queue, payload)
        if data is None:
            data = check_size(f'exchange {exchange!r} payload', encode_json(payload), self.max_message_size)
        return data

    def encode(self, queue: Queue[Any], payload: Any) -> bytes:
        data = queue.codec.encode(payload)
        if len(data) > self.max_message_size:  # the target's name is formatted only when it raises
            check_size(f'queue {queue.name!r}', data, self.max_message_size)
        return data

    # consuming

    async def bind_consumer(self, consumer: Consumer) -> None:
        """Start consuming ``consumer.queue`` with the delivery policy."""
        name = consumer.queue.name
        if name in self._running:
            raise DeclarationError(f'queue {name!r} already has a consumer on this broker: '
                                   f'{self._running[name].consumer.key}')
        await self.transport.declare(consumer.queue)
        await self.transport.consume(consumer.queue, consumer.concurrency * (consumer.batch or 1))  # in hand at once
        running = Running(consumer)
        self._running[name] = running
        running.loop_task = asyncio.create_task(self._consume(running), name=f'consume:{name}')

    async def stop_consumers(self, consumers: Iterable[Consumer], grace: float) -> None:
        """Stop fetching, let in-flight handlers finish for up to ``grace`` s, release the rest.
        Releasing is bounded by the same deadline: with the server unreachable, what cannot be
        released is logged and left to the transport's recovery (the server gives it back)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        runs = [r for c in consumers if (r := self._running.get(c.queue.name)) and r.consumer is c]
        for run in runs:
            run.stop()
            if self.transport.fetch_cancel_safe and run.loop_task:
                run.loop_task.cancel()
        loops = [r.loop_task for r in runs if r.loop_task]
        if loops:
            await asyncio.wait(loops, timeout=self.fetch_timeout + 1)
        for run in runs:
            if run.buffer:  # fetched, never started
                await self._bounded(run.consumer.queue, 'release prefetched messages',
                                    self.transport.release(run.consumer.queue, list(run.buffer)), deadline)
                run.buffer.clear()
        workers = [t for r in runs for t in r.tasks[1:]]
        if workers:
            await asyncio.wait(workers, timeout=max(deadline - loop.time(), 0))
        leftovers = [t for r in runs for t in r.tasks if not t.done()]
        leftovers += [r.loop_task for r in runs if r.loop_task and not r.loop_task.done()]
        for task in leftovers:
            task.cancel()  # a cancelled worker releases its message
        if leftovers:
            _, pending = await asyncio.wait(leftovers, timeout=max(deadline - loop.time(), 0.1))
            if pending:
                self.log.error('Stopping consumers: %d handler(s) could not release their message in time; '
                               'the backend gives those back', len(pending))
        for run in runs:
            del self._running[run.consumer.queue.name]
            await self._bounded(run.consumer.queue, 'stop consuming', self.transport.stop_consuming(run.consumer.queue),
                                deadline)

    async def _bounded(self, queue: Queue[Any], action: str, operation: Awaitable[None], deadline: float) -> None:
        """Run a stop step until the stop deadline (at least 0.1 s); log instead of raising."""
        try:
            await asyncio.wait_for(operation, max(deadline - asyncio.get_running_loop().time(), 0.1))
        except Exception as exc:
            self.log.error('Queue %s: could not %s on stop (%s: %s); %s', queue.name, action,
                           type(exc).__name__, exc or 'out of time',
                           self.transport.unsettled_fate)


class BoundExchange:
    """An exchange bound to a broker (1.9 ``broker.push.send(payload, topic='1.android')``)."""

    __slots__ = ('broker', 'exchange')

    def __init__(self, broker: AbstractQueueBroker, exchange: Exchange) -> None:
        self.broker = broker
        self.exchange = exchange

    def __repr__(self) -> str:
        return f'<BoundExchange {self.exchange.name} on {self.broker!r}>'

    async def send(self, message: Any, *, topic: str = '', headers: Mapping[str, str] | None = None,
                   **unknown: Never) -> int:
        """Publish to every queue bound to the exchange (matching ``topic`` on a topic exchange)."""
        if unknown:
            raise UsageError(f'exchange {self.exchange.name!r}: unknown send option(s) '
                            f'{", ".join(map(repr, unknown))}')
        return await self.broker.publish(self.exchange.name, message, topic, headers=headers)


class BoundQueue(Generic[T]):
    """A queue bound to a broker: ``send``, ``send_many``, ``length``, ``depth`` and its dead letters."""

    __slots__ = ('broker', 'queue')

    def __init__(self, broker: AbstractQueueBroker, queue: Queue[T]) -> None:
        self.broker = broker
        self.queue = queue

    def __repr__(self) -> str:
        return f'<BoundQueue {self.queue.name} on {self.broker!r}>'

    async def send(self, message: T, *, delay: float | None = None, headers: Mapping[str, str] | None = None,
                   properties: Mapping[str, Any] | None = None, exchange: str | None = None,
                   topic: str | None = None, priority: int | None = None, **unknown: Never) -> None:
        """Validate and enqueue one message: a model instance or, 1.x style, a dict of fields.

        ``delay`` (s) holds it back that long, on every backend; ``headers`` are user headers it
        carries (``message.Message.headers`` on receipt); ``priority`` puts it at that level of a
        queue declared with ``priorities`` (0 the lowest and the default; consumers take higher
        first). ``properties``, ``exchange`` and ``topic`` are the 1.x AMQP keywords (message
        properties; publish through that exchange with the topic, else the queue name, as routing
        key); a transport that does not list a keyword in its ``send_options`` raises TypeError
        rather than drop it."""
        extra: dict[str, Any] = {key: value for key, value in (('properties', properties), ('exchange', exchange),
                                                                ('topic', topic)) if value is not None}
        if priority is not None:
            extra['priority'] = check_priority(self.queue.name, priority, self.queue.priorities)
        wait = self._check(delay, extra, unknown)
        check_send('queue', self.queue.name)
        envelope = Envelope(self.broker.encode(self.queue, message), new_headers(headers))
        check_message_size('queue', self.queue.name, envelope.body, envelope.headers, self.broker.max_message_size)
        await self.broker._put('queue', self.queue, [envelope], wait, **extra)

    async def send_many(self, messages: Iterable[T], *, delay: float | None = None,
                        headers: Mapping[str, str] | None = None, priority: int | None = None,
                        **unknown: Never) -> None:
        """Validate every message first, then enqueue them all in one round trip; each gets its own
        message id, all of them the same user ``headers`` and ``priority``."""
        extra = {} if priority is None else {'priority': check_priority(self.queue.name, priority,
                                                                         self.queue.priorities)}
        wait = self._check(delay, extra, unknown)
        check_send('queue', self.queue.name)
        encode = self.broker.encode
        bodies = [encode(self.queue, message) for message in messages]
        if not bodies:
            return
        if headers:
            check_user_headers(headers)
        # tuple.__new__: an Envelope without its Python-level __new__, at half the cost per message
        pairs = zip(bodies, new_headers_many(len(bodies), headers), strict=True)
        envelopes: list[Envelope] = list(map(tuple.__new__, repeat(Envelope), pairs))
        # every message has headers of the same size (ids of one length, the same trace and user headers)
        check_message_size('queue', self.queue.name, max(bodies, key=len), envelopes[0].headers,
                           self.broker.max_message_size)
        await self.broker._put('queue', self.queue, envelopes, wait, **extra)

    def _check(self, delay: float | None, extra: Mapping[str, Any], unknown: Mapping[str, Any]) -> float:
        """The delay in seconds, after refusing what this broker would otherwise drop or misread."""
        name = self.queue.name
        if unknown:
            raise UsageError(f'queue {name!r}: unknown send option(s) {", ".join(map(repr, unknown))}')
        if extra:
            transport = self.broker.transport
            refused = [key for key in extra if key not in transport.send_options]
            if refused:
                raise UsageError(f'queue {name!r}: {type(self.broker).__name__} cannot honour send option(s) '
                                f'{", ".join(map(repr, refused))}')
        return 0.0 if delay is None else check_delay(f'queue {name!r}', delay)

    async def length(self) -> int:
        return await self.broker.transport.length(self.queue.name)

    async def depth(self) -> QueueDepth:
        """Ready, delayed and in-flight counts (``AbstractQueueBroker.queue_depth``)."""
        return await self.broker.transport.depth(self.queue.name)

    async def declare(self) -> None:
        await self.broker.transport.declare(self.queue)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self.broker.transport.dead_letters(self.queue.name, limit)

    async def dead_letter_count(self) -> int:
        return await self.broker.transport.dead_letter_count(self.queue.name)

    async def requeue_dead_letters(self, select: SelectDeadLetter | None = None) -> int:
        return await self.broker.requeue_dead_letters(self.queue.name, select)

    async def purge_dead_letters(self, select: SelectDeadLetter | None = None) -> int:
        return await self.broker.purge_dead_letters(self.queue.name, select)


def _every(position: int, letter: DeadLetter) -> bool:
    return True
