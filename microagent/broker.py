"""The queue broker: at-least-once delivery, written once for every backend.

A backend provides storage primitives (put, fetch, ack, retry, dead-letter, length). This module
owns the policy: validate on send and on receive, run at most ``concurrency`` handlers per consumer,
acknowledge only after the handler returns, retry with exponential backoff, then dead-letter with the
reason; stop taking work on ``stop`` and wait for in-flight handlers.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, Never, TypeVar

from .dsn import hide_password
from .errors import DeclarationError, InvalidArgument, InvalidPayload, QueueAttributeError, QueueNotFound, UsageError
from .exchange import Exchange
from .payload import check_size, encode_json
from .queue import Queue, topics_match

if TYPE_CHECKING:
    from .agent import Consumer

T = TypeVar('T')

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
YIELD_EVERY = 32
SETTLE_TRIES = 4  # a failed ack, retry or dead-letter is tried this often in all, then the message is released


NO_CONTEXT: Mapping[str, Any] = MappingProxyType({})


class Delivery:
    """One message handed to a consumer. ``attempt`` counts deliveries, starting at 1; ``context``
    holds backend extras passed to handlers that ask for them (``amqp`` on RabbitMQ)."""

    __slots__ = ('attempt', 'context', 'data', 'token')

    def __init__(self, data: bytes, attempt: int = 1, token: Any = None,
                 context: Mapping[str, Any] = NO_CONTEXT) -> None:
        self.data = data
        self.attempt = attempt
        self.token = token
        self.context = context

    def __repr__(self) -> str:
        return f'<Delivery attempt {self.attempt}: {self.data[:60]!r}>'


@dataclass(frozen=True)
class DeadLetter:
    """A message that was not handled: the original body, why, after how many attempts, when."""

    queue: str
    body: bytes
    reason: str
    attempts: int
    time: float

    def to_dict(self) -> dict[str, Any]:
        return {'queue': self.queue, 'body': self.body.decode('utf-8', 'replace'),
                'reason': self.reason, 'attempts': self.attempts, 'time': self.time}


def backoff(attempt: int, base: float, cap: float = 60.0) -> float:
    """Delay before the retry that follows delivery ``attempt``: base, 2 x base, 4 x base ... cap."""
    return float(min(base * 2 ** (attempt - 1), cap))


class _Running:
    """One bound consumer: a fetch loop filling a buffer, ``concurrency`` workers draining it, and a
    watchdog enforcing the handler timeout (one timer per consumer, not one per message)."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.stopping = asyncio.Event()
        self.loop_task: asyncio.Task[None] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.buffer: deque[Delivery] = deque()
        self.idle: deque[asyncio.Future[None]] = deque()
        self.waking = False
        self.refill = asyncio.Event()  # set when the work in hand falls to the low-water mark
        self.capacity = consumer.concurrency + consumer.prefetch
        self.low_water = self.capacity // 2
        self.busy = 0
        self.deadlines: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()

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


class AbstractQueueBroker(ABC):
    """Queue broker: ``broker.mailer`` (1.x) or ``broker[mailer]`` (typed) is a bound queue."""

    fetch_timeout: float = 1.0
    #: True when cancelling ``fetch`` can never lose a message, so ``stop`` need not wait for it
    fetch_cancel_safe: bool = False
    #: what becomes of a message that could be neither settled nor released, for the log
    unsettled_fate: str = 'it stays unsettled until the backend gives it back'

    def __init__(self, dsn: str, log: logging.Logger | None = None,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.dsn = dsn
        self.uid = uuid.uuid4().hex
        self.log = log or logging.getLogger('microagent.broker')
        self.max_message_size = max_message_size
        self._running: dict[str, _Running] = {}

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {hide_password(self.dsn)}>'

    # backend interface

    #: send keywords this backend honours besides ``delay`` (AMQP: the 1.x ``properties``, ``exchange``,
    #: ``topic``); any other one given to ``send`` is a TypeError, never silently dropped
    send_options: frozenset[str] = frozenset()

    @abstractmethod
    async def put(self, queue: Queue[Any], messages: list[bytes], delay: float = 0.0) -> None:
        """Append encoded messages to a queue, in order, in as few round trips as possible; with a
        ``delay`` (s), they become deliverable only once it has passed."""

    async def put_with(self, queue: Queue[Any], messages: list[bytes], delay: float,
                       options: Mapping[str, Any]) -> None:
        """``put`` with backend send options (only names listed in ``send_options`` reach it)."""
        raise UsageError(f'queue {queue.name!r}: {type(self).__name__} cannot honour {", ".join(options)}')

    @abstractmethod
    async def fetch(self, queue: Queue[Any], count: int, timeout: float) -> list[Delivery]:
        """Take up to ``count`` messages, waiting up to ``timeout`` s for the first. Taken messages
        stay owned by this broker until acked, retried, dead-lettered or released."""

    @abstractmethod
    async def ack(self, queue: Queue[Any], delivery: Delivery) -> None:
        """Forget a handled message."""

    @abstractmethod
    async def retry(self, queue: Queue[Any], delivery: Delivery, delay: float, reason: str) -> None:
        """Deliver the message again after ``delay`` s, as attempt ``delivery.attempt + 1``."""

    @abstractmethod
    async def dead_letter(self, queue: Queue[Any], delivery: Delivery, reason: str) -> None:
        """Move the message to the queue's dead-letter store with the reason."""

    @abstractmethod
    async def release(self, queue: Queue[Any], deliveries: list[Delivery]) -> None:
        """Return unhandled messages to the queue (on stop), without counting an attempt."""

    @abstractmethod
    async def queue_length(self, name: str) -> int:
        """How many messages wait in the queue."""

    @abstractmethod
    async def dead_letters(self, name: str, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of a queue."""

    @abstractmethod
    async def dead_letter_count(self, name: str) -> int:
        """How many dead letters a queue has."""

    @abstractmethod
    async def requeue_dead_letters(self, name: str) -> int:
        """Put every dead letter of the queue back on it, as fresh messages; return how many."""

    async def bindings(self, exchange: str) -> dict[str, tuple[str, ...]]:
        """The queues bound to ``exchange`` where this broker's messages live (its hub, its server):
        queue name -> topics (none: every routing key). Backends with native exchanges need not."""
        raise NotImplementedError(f'{type(self).__name__} keeps no exchange bindings; override publish')

    async def route(self, exchange: str, routing_key: str, data: bytes, targets: list[str]) -> None:
        """Deliver a message published to an exchange to ``targets``, the names of the bound queues
        it routes to, all or none."""
        raise NotImplementedError(f'{type(self).__name__} cannot route exchange {exchange!r}')

    async def declare_queue(self, queue: Queue[Any]) -> None:
        """Create the queue and record its exchange binding where the backend keeps them."""

    async def close(self) -> None:
        """Release connections; the broker may not be used afterwards."""

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

    async def publish(self, exchange: str, payload: Any, routing_key: str = '') -> int:
        """Publish to an exchange: every queue bound to it on this broker's hub or server (and
        matching ``routing_key`` on a topic exchange) gets the message, validated against the model
        of each such queue this process declares. Returns how many queues."""
        bound = await self.bindings(exchange)
        targets = [name for name, topics in bound.items() if topics_match(topics, routing_key)]
        if not targets:
            raise QueueNotFound(f'No queue is bound to exchange {exchange!r} for key {routing_key!r}')
        await self.route(exchange, routing_key, self.encode_for(targets, payload), targets)
        return len(targets)

    def encode_for(self, targets: Iterable[str], payload: Any) -> bytes:
        """The payload validated against every target queue declared here; plain JSON if none is."""
        known = Queue.get_all()
        data: bytes | None = None
        for name in targets:
            if name in known:
                data = self.encode(known[name], payload)
        if data is None:
            data = check_size(f'exchange payload for {", ".join(targets)}', encode_json(payload),
                              self.max_message_size)
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
        await self.declare_queue(consumer.queue)
        running = _Running(consumer)
        self._running[name] = running
        running.loop_task = asyncio.create_task(self._consume(running), name=f'consume:{name}')

    async def stop_consumers(self, consumers: Iterable[Consumer], grace: float) -> None:
        """Stop fetching, let in-flight handlers finish for up to ``grace`` s, release the rest."""
        runs = [r for c in consumers if (r := self._running.get(c.queue.name)) and r.consumer is c]
        for run in runs:
            run.stop()
            if self.fetch_cancel_safe and run.loop_task:
                run.loop_task.cancel()
        loops = [r.loop_task for r in runs if r.loop_task]
        if loops:
            await asyncio.wait(loops, timeout=self.fetch_timeout + 1)
        for run in runs:
            if run.buffer:  # fetched, never started
                await self.release(run.consumer.queue, list(run.buffer))
                run.buffer.clear()
        workers = [t for r in runs for t in r.tasks[1:]]
        if workers:
            await asyncio.wait(workers, timeout=grace)
        leftovers = [t for r in runs for t in r.tasks if not t.done()]
        leftovers += [r.loop_task for r in runs if r.loop_task and not r.loop_task.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.gather(*leftovers, return_exceptions=True)
        for run in runs:
            del self._running[run.consumer.queue.name]

    async def _consume(self, run: _Running) -> None:
        consumer = run.consumer
        queue = consumer.queue
        run.tasks = [asyncio.create_task(run.watchdog())]
        run.tasks += [asyncio.create_task(self._work(run)) for _ in range(consumer.concurrency)]
        failures = 0
        while not run.stopping.is_set():
            in_hand = run.busy + len(run.buffer)
            if in_hand > run.low_water:  # fetch in large batches, while half the work is still in hand
                run.refill.clear()
                await run.refill.wait()
                continue
            free = run.capacity - in_hand
            try:
                deliveries = await self.fetch(queue, free, self.fetch_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = backoff(failures, 0.1, 10.0)
                self.log.warning('Fetching from queue %s failed (%s: %s); retry %d in %.1fs',
                                 queue.name, type(exc).__name__, exc, failures, delay)
                await asyncio.sleep(delay)
                continue
            if failures:
                self.log.info('Fetching from queue %s works again', queue.name)
                failures = 0
            if run.stopping.is_set():
                await self.release(queue, deliveries)
                break
            if deliveries:
                run.buffer.extend(deliveries)
                run.wake_one()

    async def _work(self, run: _Running) -> None:
        """A worker: handles buffered deliveries one at a time until the consumer stops. This is the
        hot path, kept inline: per message, no coroutine but the handler's and the ack's."""
        task = asyncio.current_task()
        assert task is not None
        consumer, buffer = run.consumer, run.buffer
        queue = consumer.queue
        streak = 0  # messages handled since this worker last let other tasks run
        while True:
            if not buffer:
                if run.stopping.is_set():
                    return
                streak = 0
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
                    await self._reject(queue, delivery, exc)
                    continue
                failure: Exception | None = None
                run.deadlines[task] = time.monotonic() + consumer.timeout  # the loop's clock
                try:
                    await consumer(payload, delivery.context)
                except asyncio.CancelledError:
                    if task not in run.expired:
                        raise
                    failure = TimeoutError()
                except Exception as exc:
                    failure = exc
                finally:
                    del run.deadlines[task]
                    if task in run.expired:  # the watchdog's cancel is consumed here, not by the next await
                        run.expired.discard(task)
                        task.uncancel()
                if failure is not None:
                    await self._failed(consumer, delivery, failure)
                elif consumer.autoack:
                    try:
                        await self.ack(queue, delivery)
                    except Exception as exc:
                        await self._settle_failed(queue, delivery, 'ack', exc, partial(self.ack, queue, delivery))
            except asyncio.CancelledError:
                await self.release(queue, [delivery])
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

    def _decode(self, consumer: Consumer, delivery: Delivery) -> tuple[Any, Any]:
        try:
            return consumer.decode(check_size(f'queue {consumer.queue.name!r}', delivery.data, self.max_message_size))
        except InvalidPayload:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # a custom decode: whatever it raises, the message cannot be handled
            raise InvalidPayload(f'queue {consumer.queue.name!r}', [f'{type(exc).__name__}: {exc}']) from None

    async def _reject(self, queue: Queue[Any], delivery: Delivery, exc: InvalidPayload) -> None:
        self.log.warning('Dead-lettered a message of queue %s: %s', queue.name, exc)
        await self._settle_message(queue, delivery, 'dead-letter', partial(self.dead_letter, queue, delivery, str(exc)))

    async def _settle_message(self, queue: Queue[Any], delivery: Delivery, action: str,
                              operation: Callable[[], Awaitable[None]]) -> None:
        try:
            await operation()
        except Exception as exc:
            await self._settle_failed(queue, delivery, action, exc, operation)

    async def _settle_failed(self, queue: Queue[Any], delivery: Delivery, action: str, exc: Exception,
                             operation: Callable[[], Awaitable[None]]) -> None:
        """A settle operation failed: try it again with backoff, then give the message back to the
        queue, so no message stays in hand while the consumer lives."""
        for tries in range(1, SETTLE_TRIES):
            delay = backoff(tries, 0.05, 1.0)
            self.log.warning('Queue %s: could not %s a message (%s: %s); trying again in %.2fs',
                             queue.name, action, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            try:
                await operation()
            except Exception as again:
                exc = again
            else:
                self.log.info('Queue %s: %s of the message succeeded on try %d', queue.name, action, tries + 1)
                return
        await self._give_back(queue, delivery, f'{action} ({SETTLE_TRIES} tries)', exc)

    async def _give_back(self, queue: Queue[Any], delivery: Delivery, action: str, exc: Exception,
                         trace: bool = False) -> None:
        """Release a message that could not be settled; say truthfully what becomes of it."""
        trace_of = exc if trace else None
        try:
            await self.release(queue, [delivery])
        except Exception as failure:
            self.log.error('Queue %s: could not %s a message (%s: %s) nor return it to the queue (%s: %s); %s',
                           queue.name, action, type(exc).__name__, exc, type(failure).__name__, failure,
                           self.unsettled_fate, exc_info=trace_of)
        else:
            self.log.error('Queue %s: could not %s a message (%s: %s); returned it to the queue, '
                           'it will be delivered again', queue.name, action, type(exc).__name__, exc,
                           exc_info=trace_of)

    async def _failed(self, consumer: Consumer, delivery: Delivery, exc: Exception) -> None:
        queue = consumer.queue
        if isinstance(exc, TimeoutError):
            reason = f'timeout: {consumer.key} took more than {consumer.timeout}s'
        else:
            reason = f'{type(exc).__name__}: {exc}'
        if delivery.attempt <= consumer.max_retries:
            delay = backoff(delivery.attempt, consumer.retry_delay)
            self.log.warning('Queue %s: %s failed on attempt %d (%s); retry in %.2fs',
                             queue.name, consumer.key, delivery.attempt, reason, delay)
            await self._settle_message(queue, delivery, 'retry', partial(self.retry, queue, delivery, delay, reason))
        else:
            self.log.error('Queue %s: %s failed on attempt %d (%s); dead-lettered',
                           queue.name, consumer.key, delivery.attempt, reason)
            await self._settle_message(queue, delivery, 'dead-letter',
                                       partial(self.dead_letter, queue, delivery, reason))


class BoundExchange:
    """An exchange bound to a broker (1.9 ``broker.push.send(payload, topic='1.android')``)."""

    __slots__ = ('broker', 'exchange')

    def __init__(self, broker: AbstractQueueBroker, exchange: Exchange) -> None:
        self.broker = broker
        self.exchange = exchange

    def __repr__(self) -> str:
        return f'<BoundExchange {self.exchange.name} on {self.broker!r}>'

    async def send(self, message: Any, *, topic: str = '', **unknown: Never) -> int:
        """Publish to every queue bound to the exchange (matching ``topic`` on a topic exchange)."""
        if unknown:
            raise UsageError(f'exchange {self.exchange.name!r}: unknown send option(s) '
                            f'{", ".join(map(repr, unknown))}')
        return await self.broker.publish(self.exchange.name, message, topic)


class BoundQueue(Generic[T]):
    """A queue bound to a broker: ``send``, ``send_many``, ``length`` and its dead letters."""

    __slots__ = ('broker', 'queue')

    def __init__(self, broker: AbstractQueueBroker, queue: Queue[T]) -> None:
        self.broker = broker
        self.queue = queue

    def __repr__(self) -> str:
        return f'<BoundQueue {self.queue.name} on {self.broker!r}>'

    async def send(self, message: T, *, delay: float | None = None, properties: Mapping[str, Any] | None = None,
                   exchange: str | None = None, topic: str | None = None, **unknown: Never) -> None:
        """Validate and enqueue one message: a model instance or, 1.x style, a dict of fields.

        ``delay`` (s) holds it back that long, on every backend. ``properties``, ``exchange`` and
        ``topic`` are the 1.x AMQP keywords (message properties; publish through that exchange with
        the topic, else the queue name, as routing key); a backend that cannot honour a keyword
        raises TypeError rather than drop it."""
        extra = {key: value for key, value in
                 (('properties', properties), ('exchange', exchange), ('topic', topic)) if value is not None}
        wait = self._check(delay, extra, unknown)
        await self._put([self.broker.encode(self.queue, message)], wait, extra)

    async def send_many(self, messages: Iterable[T], *, delay: float | None = None, **unknown: Never) -> None:
        """Validate every message first, then enqueue them all in one round trip."""
        wait = self._check(delay, {}, unknown)
        encoded = [self.broker.encode(self.queue, message) for message in messages]
        if encoded:
            await self._put(encoded, wait, {})

    def _check(self, delay: float | None, extra: Mapping[str, Any], unknown: Mapping[str, Any]) -> float:
        """The delay in seconds, after refusing what this broker would otherwise drop or misread."""
        name = self.queue.name
        if unknown:
            raise UsageError(f'queue {name!r}: unknown send option(s) {", ".join(map(repr, unknown))}')
        refused = [key for key in extra if key not in self.broker.send_options]
        if refused:
            raise UsageError(f'queue {name!r}: {type(self.broker).__name__} cannot honour send option(s) '
                            f'{", ".join(map(repr, refused))}')
        if delay is None:
            return 0.0
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay < math.inf:
            raise InvalidArgument(f'queue {name!r}: delay must be a number of seconds >= 0, got {delay!r}')
        return float(delay)

    async def _put(self, encoded: list[bytes], delay: float, extra: Mapping[str, Any]) -> None:
        if extra:
            await self.broker.put_with(self.queue, encoded, delay, extra)
        else:
            await self.broker.put(self.queue, encoded, delay)

    async def length(self) -> int:
        return await self.broker.queue_length(self.queue.name)

    async def declare(self) -> None:
        await self.broker.declare_queue(self.queue)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self.broker.dead_letters(self.queue.name, limit)

    async def dead_letter_count(self) -> int:
        return await self.broker.dead_letter_count(self.queue.name)

    async def requeue_dead_letters(self) -> int:
        return await self.broker.requeue_dead_letters(self.queue.name)
