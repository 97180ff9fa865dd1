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
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from itertools import repeat
from typing import Any, Generic, Never, Self, TypeVar, cast

from microagent.dsn import hide_password
from microagent.errors import (
    DeclarationError,
    InvalidArgument,
    InvalidPayload,
    QueueAttributeError,
    QueueNotFound,
    UsageError,
)
from microagent.exchange import Exchange
from microagent.handlers import Consumer
from microagent.logs import failure_fields, message_fields, set_handler
from microagent.message import Envelope, check_user_headers, current_var, new_headers, new_headers_many
from microagent.middleware import (
    Handling,
    MiddlewareLike,
    Outcome,
    Sending,
    SendingKind,
    Site,
    active,
    added,
    backend_name,
    wrap,
)
from microagent.payload import DEFAULT_MAX_MESSAGE_SIZE, check_size, encode_json, undecodable
from microagent.queue import Queue
from microagent.readiness import PING_TIMEOUT, pinged
from microagent.retry import Retrier, backoff
from microagent.sends import check_send, set_sender
from microagent.transport import BrokerTransport, DeadLetter, Delivery, SelectDeadLetter

__all__ = ['DEFAULT_MAX_MESSAGE_SIZE', 'AbstractQueueBroker', 'BoundExchange', 'BoundQueue', 'DeadLetter',
           'Delivery']

T = TypeVar('T')

YIELD_EVERY = 32
SETTLE_TRIES = 4  # a failed ack, retry or dead-letter is tried this often in all, then the message is released


class _Running:
    """One bound consumer: a fetch loop filling a buffer, ``concurrency`` workers draining it, and a
    watchdog enforcing the handler timeout (one timer per consumer, not one per message)."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.stopping = asyncio.Event()
        self.loop_task: asyncio.Task[None] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.buffer: deque[Delivery[Any]] = deque()
        self.idle: deque[asyncio.Future[None]] = deque()
        self.waking = False
        self.refill = asyncio.Event()  # set when the work in hand falls to the low-water mark
        self.capacity = consumer.concurrency + consumer.prefetch
        self.low_water = self.capacity // 2
        self.busy = 0
        self.deadlines: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self.retrier: Retrier | None = None  # the fetch loop's: its failures say it cannot fetch now
        self.site: Site | None = None  # for middlewares, made on first use

    def wake_one(self) -> None:
        """Wake one idle worker; it wakes the next if work remains. One wake pending at a time, so
        handlers that never yield do not wake every worker for nothing."""
        if self.waking:
            return
        while self.idle:
            waiter = self.idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.waking = True
                return

    async def wait_for_work(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self.idle.append(waiter)
        await waiter
        self.waking = False

    def stop(self) -> None:
        self.stopping.set()
        for waiter in self.idle:
            if not waiter.done():
                waiter.set_result(None)
        self.idle.clear()

    async def watchdog(self) -> None:
        """Cancel a worker whose handler overran its timeout; the worker reports a TimeoutError."""
        tick = min(max(self.consumer.timeout / 20, 0.005), 1.0)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for task, deadline in list(self.deadlines.items()):
                if deadline <= now and task not in self.expired:
                    self.expired.add(task)
                    task.cancel()


class AbstractQueueBroker:
    """The broker engine over a ``BrokerTransport``: ``broker.mailer`` (1.x) or ``broker[mailer]``
    (typed) is a bound queue. Backends subclass it only to build their transport in ``__init__``."""

    fetch_timeout: float = 1.0

    def __init__(self, transport: BrokerTransport[Any], *, dsn: str = '', log: logging.Logger | None = None,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.transport = transport
        self.dsn = dsn
        self.uid = uuid.uuid4().hex
        self.log = log or logging.getLogger('microagent.broker')
        self.max_message_size = max_message_size
        self.backend = backend_name(transport)
        #: wrap every send through this broker (``use``); an agent adds its own
        self.middlewares: tuple[MiddlewareLike, ...] = ()
        self._running: dict[str, _Running] = {}

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

    def __getitem__(self, queue: Queue[T]) -> BoundQueue[T]:
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
        return check_size(f'queue {queue.name!r}', queue.codec.encode(payload), self.max_message_size)

    # consuming

    async def bind_consumer(self, consumer: Consumer) -> None:
        """Start consuming ``consumer.queue`` with the delivery policy."""
        name = consumer.queue.name
        if name in self._running:
            raise DeclarationError(f'queue {name!r} already has a consumer on this broker: '
                                   f'{self._running[name].consumer.key}')
        await self.transport.declare(consumer.queue)
        await self.transport.consume(consumer.queue, consumer.concurrency)
        running = _Running(consumer)
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

    async def _consume(self, run: _Running) -> None:
        consumer = run.consumer
        queue = consumer.queue
        run.tasks = [asyncio.create_task(run.watchdog())]
        run.tasks += [asyncio.create_task(self._work(run)) for _ in range(consumer.concurrency)]
        retrier = run.retrier = Retrier(self.log, f'Fetching from queue {queue.name}')
        while not run.stopping.is_set():
            in_hand = run.busy + len(run.buffer)
            if in_hand > run.low_water:  # fetch in large batches, while half the work is still in hand
                run.refill.clear()
                await run.refill.wait()
                continue
            free = run.capacity - in_hand
            try:
                deliveries = await self.transport.fetch(queue, free, self.fetch_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await retrier.failed(exc)
                continue
            retrier.succeeded()
            if run.stopping.is_set():
                await self.transport.release(queue, deliveries)
                break
            if deliveries:
                run.buffer.extend(deliveries)
                run.wake_one()

    async def _work(self, run: _Running) -> None:
        """A worker: handles buffered deliveries one at a time until the consumer stops. This is the
        hot path, kept inline: per message, no coroutine but the handler's and the ack's."""
        task = cast(asyncio.Task[None], asyncio.current_task())
        consumer, buffer, queue = run.consumer, run.buffer, run.consumer.queue
        set_sender(consumer.agent)  # this task's own context: what the consumer sends is checked as its
        set_handler(consumer.agent, consumer.key)  # and what it logs names the handler
        streak = 0  # messages handled since this worker last let other tasks run (or about: waits do too)
        while True:
            if not buffer:
                if run.stopping.is_set():
                    return
                await run.wait_for_work()
                continue
            delivery = buffer.popleft()
            if buffer:
                run.wake_one()
            run.busy += 1
            try:
                try:
                    payload = self._decode(consumer, delivery)
                except InvalidPayload as exc:
                    if middlewares := active(consumer.agent.middlewares):
                        await self._report_invalid(run, delivery, exc, middlewares)
                    await self._reject(queue, delivery, exc)
                    continue
                failure: Exception | None = None
                run.deadlines[task] = time.monotonic() + consumer.timeout  # the loop's clock
                held = current_var.set(delivery)  # read into a Message only if the handler asks or sends
                try:
                    if middlewares := active(consumer.agent.middlewares):
                        await self._handle_through(run, task, delivery, payload, middlewares)
                    else:
                        await consumer(payload, delivery.context)
                except asyncio.CancelledError:
                    if task not in run.expired:
                        raise
                    failure = TimeoutError()
                except Exception as exc:
                    failure = exc
                finally:
                    current_var.reset(held)
                    del run.deadlines[task]
                    if task in run.expired:  # the watchdog's cancel is consumed here, not by the next await
                        run.expired.discard(task)
                        task.uncancel()
                if failure is not None:
                    await self._failed(consumer, delivery, failure)
                elif consumer.autoack:
                    try:
                        await self.transport.ack(queue, delivery)
                    except Exception as exc:
                        await self._ack_failed(queue, delivery, exc)
            except asyncio.CancelledError:
                await self.transport.release(queue, [delivery])
                raise
            except Exception as exc:  # a bug, not a backend failure: still, the message is not left in hand
                await self._give_back(queue, delivery, 'handle', exc, trace=True)
            finally:
                run.busy -= 1
                if run.busy + len(buffer) <= run.low_water:  # also after a dead-lettered message's `continue`
                    run.refill.set()
            streak += 1
            if streak == YIELD_EVERY:  # handlers that never wait would starve the fetch loop's I/O
                streak = 0
                await asyncio.sleep(0)

    def _handling(self, run: _Running, delivery: Delivery[Any]) -> Handling:
        if run.site is None:
            consumer = run.consumer
            run.site = Site('consumer', type(consumer.agent).__name__, consumer.key, consumer.queue.name,
                            self.backend, consumer.max_retries)
        return Handling(run.site, delivery, delivery.attempt)

    def _handle_through(self, run: _Running, task: asyncio.Task[None], delivery: Delivery[Any],
                        payload: Any, middlewares: tuple[MiddlewareLike, ...]) -> Awaitable[Any]:
        """The handler behind the agent's middlewares; they see the outcome the engine chose (a
        timeout reaches them as ``TimeoutError``, and from them the worker). Not a coroutine itself:
        the worker awaits the chain directly, one frame less per message."""
        consumer = run.consumer
        handling = self._handling(run, delivery)

        async def handle() -> Any:
            try:
                return await consumer(payload, delivery.context)
            except asyncio.CancelledError:
                if task not in run.expired:
                    raise
                timeout = TimeoutError(f'{consumer.key} took more than {consumer.timeout}s')
                self._note_failure(handling, consumer, delivery, timeout, timed_out=True)
                raise timeout from None
            except Exception as exc:
                self._note_failure(handling, consumer, delivery, exc)
                raise

        return wrap(middlewares, 'handle', handling, handle)()

    @staticmethod
    def _note_failure(handling: Handling, consumer: Consumer, delivery: Delivery[Any], exc: Exception,
                      timed_out: bool = False) -> None:
        delay = _retry_delay(consumer, delivery)
        handling.failed(exc, Outcome.DEAD_LETTERED if delay is None else Outcome.RETRIED, timed_out=timed_out,
                        retry_delay=delay)

    async def _report_invalid(self, run: _Running, delivery: Delivery[Any], exc: InvalidPayload,
                              middlewares: tuple[MiddlewareLike, ...]) -> None:
        """Show the middlewares a message that fails validation: it is dead-lettered unhandled."""
        handling = self._handling(run, delivery)

        async def invalid() -> None:
            handling.failed(exc, Outcome.DEAD_LETTERED)
            raise exc

        try:
            await wrap(middlewares, 'handle', handling, invalid)()
        except InvalidPayload:
            pass
        except Exception:
            self.log.exception('Queue %s: a middleware failed on an invalid message', run.consumer.queue.name)

    async def _ack_failed(self, queue: Queue[Any], delivery: Delivery[Any], exc: Exception) -> None:
        await self._settle_failed(queue, delivery, 'ack', exc, partial(self.transport.ack, queue, delivery))

    def _decode(self, consumer: Consumer, delivery: Delivery[Any]) -> tuple[Any, Any]:
        try:
            body = check_size(f'queue {consumer.queue.name!r}', delivery.envelope.body, self.max_message_size)
            return consumer.decode(body)
        except InvalidPayload:
            raise
        except Exception as exc:  # a custom decode: whatever it raises, the message cannot be handled
            raise undecodable(f'queue {consumer.queue.name!r}', exc) from None

    async def _reject(self, queue: Queue[Any], delivery: Delivery[Any], exc: InvalidPayload) -> None:
        self.log.warning('Queue %s: an invalid message is dead-lettered: %s', queue.name, exc,
                         extra=failure_fields(delivery, None, 'dead_lettered', delivery.attempt))
        await self._settle_message(queue, delivery, 'dead-letter',
                                   partial(self.transport.dead_letter, queue, delivery, str(exc)))

    async def _settle_message(self, queue: Queue[Any], delivery: Delivery[Any], action: str,
                              operation: Callable[[], Awaitable[None]]) -> None:
        try:
            await operation()
        except Exception as exc:
            await self._settle_failed(queue, delivery, action, exc, operation)

    async def _settle_failed(self, queue: Queue[Any], delivery: Delivery[Any], action: str, exc: Exception,
                             operation: Callable[[], Awaitable[None]]) -> None:
        """A settle operation failed: try it again with backoff, then give the message back to the
        queue, so no message stays in hand while the consumer lives."""
        ids = message_fields(delivery)
        for tries in range(1, SETTLE_TRIES):
            delay = backoff(tries, 0.05, 1.0)
            self.log.warning('Queue %s: could not %s a message (%s: %s); trying again in %.2fs',
                             queue.name, action, type(exc).__name__, exc, delay, extra=ids)
            await asyncio.sleep(delay)
            try:
                await operation()
            except Exception as again:
                exc = again
            else:
                self.log.info('Queue %s: %s of the message succeeded on try %d', queue.name, action, tries + 1,
                              extra=ids)
                return
        await self._give_back(queue, delivery, f'{action} ({SETTLE_TRIES} tries)', exc)

    async def _give_back(self, queue: Queue[Any], delivery: Delivery[Any], action: str, exc: Exception,
                         trace: bool = False) -> None:
        """Release a message that could not be settled; say truthfully what becomes of it."""
        trace_of = exc if trace else None
        ids = message_fields(delivery)
        try:
            await self.transport.release(queue, [delivery])
        except Exception as failure:
            self.log.error('Queue %s: could not %s a message (%s: %s) nor return it to the queue (%s: %s); %s',
                           queue.name, action, type(exc).__name__, exc, type(failure).__name__, failure,
                           self.transport.unsettled_fate, exc_info=trace_of, extra=ids)
        else:
            self.log.error('Queue %s: could not %s a message (%s: %s); returned it to the queue, '
                           'it will be delivered again', queue.name, action, type(exc).__name__, exc,
                           exc_info=trace_of, extra=ids)

    async def _failed(self, consumer: Consumer, delivery: Delivery[Any], exc: Exception) -> None:
        queue = consumer.queue
        if isinstance(exc, TimeoutError):
            reason = f'timeout: {consumer.key} took more than {consumer.timeout}s'
        else:
            reason = f'{type(exc).__name__}: {exc}'
        delay = _retry_delay(consumer, delivery)
        attempt, retries = delivery.attempt, consumer.max_retries
        if delay is not None:
            self.log.warning('Queue %s: %s failed on attempt %d (%s); retry %d of %d in %s s',
                             queue.name, consumer.key, attempt, reason, attempt, retries, _seconds(delay),
                             extra=failure_fields(delivery, consumer.key, 'retried', attempt, retries, delay))
            await self._settle_message(queue, delivery, 'retry',
                                       partial(self.transport.retry, queue, delivery, delay, reason))
        else:
            self.log.error('Queue %s: %s failed on attempt %d, after %d retries; dead-lettered: %s',
                           queue.name, consumer.key, attempt, retries, reason,
                           extra=failure_fields(delivery, consumer.key, 'dead_lettered', attempt, retries))
            await self._settle_message(queue, delivery, 'dead-letter',
                                       partial(self.transport.dead_letter, queue, delivery, reason))


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
    """A queue bound to a broker: ``send``, ``send_many``, ``length`` and its dead letters."""

    __slots__ = ('broker', 'queue')

    def __init__(self, broker: AbstractQueueBroker, queue: Queue[T]) -> None:
        self.broker = broker
        self.queue = queue

    def __repr__(self) -> str:
        return f'<BoundQueue {self.queue.name} on {self.broker!r}>'

    async def send(self, message: T, *, delay: float | None = None, headers: Mapping[str, str] | None = None,
                   properties: Mapping[str, Any] | None = None, exchange: str | None = None,
                   topic: str | None = None, **unknown: Never) -> None:
        """Validate and enqueue one message: a model instance or, 1.x style, a dict of fields.

        ``delay`` (s) holds it back that long, on every backend; ``headers`` are user headers it
        carries (``message.Message.headers`` on receipt). ``properties``, ``exchange`` and ``topic``
        are the 1.x AMQP keywords (message properties; publish through that exchange with the
        topic, else the queue name, as routing key); a transport that does not list a keyword in its
        ``send_options`` raises TypeError rather than drop it."""
        extra = {key: value for key, value in
                 (('properties', properties), ('exchange', exchange), ('topic', topic)) if value is not None}
        wait = self._check(delay, extra, unknown)
        check_send('queue', self.queue.name)
        envelope = Envelope(self.broker.encode(self.queue, message), new_headers(headers))
        await self.broker._put('queue', self.queue, [envelope], wait, **extra)

    async def send_many(self, messages: Iterable[T], *, delay: float | None = None,
                        headers: Mapping[str, str] | None = None, **unknown: Never) -> None:
        """Validate every message first, then enqueue them all in one round trip; each gets its own
        message id, all of them the same user ``headers``."""
        wait = self._check(delay, {}, unknown)
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
        await self.broker._put('queue', self.queue, envelopes, wait)

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
        if delay is None:
            return 0.0
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay < math.inf:
            raise InvalidArgument(f'queue {name!r}: delay must be a number of seconds >= 0, got {delay!r}')
        return float(delay)

    async def length(self) -> int:
        return await self.broker.transport.length(self.queue.name)

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


def _seconds(delay: float) -> str:
    """``4.0``, ``0.25``, ``0.01``: a retry delay as a person reads it."""
    return f'{delay:.1f}' if delay >= 1 else f'{delay:.2g}'


def _retry_delay(consumer: Consumer, delivery: Delivery[Any]) -> float | None:
    """Seconds until the failed message's next attempt; None when it is dead-lettered instead."""
    if delivery.attempt <= consumer.max_retries:
        return backoff(delivery.attempt, consumer.retry_delay)
    return None
