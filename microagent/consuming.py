"""The consume loop of the broker engine: fetch within a consumer's free slots, decode, run the
handler under its timeout and middlewares, ack on success, and hand failures to ``Settlement``.

``Consuming`` is a part of the broker engine (``AbstractQueueBroker`` derives from it), kept apart
so the send side and the consume side each read on their own.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from functools import cached_property
from typing import Any, cast

from microagent.batching import Batching
from microagent.errors import InvalidPayload
from microagent.handlers import Consumer
from microagent.logs import set_handler
from microagent.message import current_var
from microagent.middleware import Handling, MiddlewareLike, Outcome, active, wrap
from microagent.ratelimit import Limiter, limiter_of, queue_key
from microagent.retry import Retrier
from microagent.running import Running
from microagent.sends import set_sender
from microagent.settle import retry_delay
from microagent.transport import BrokerTransport, Delivery

YIELD_EVERY = 32


class Consuming(Batching):
    """The broker's consume loop, over its ``transport``; settling is ``Settlement``'s, batch
    workers ``Batching``'s."""

    transport: BrokerTransport[Any]
    log: logging.Logger
    backend: str
    fetch_timeout: float
    max_message_size: int

    async def _consume(self, run: Running) -> None:
        consumer = run.consumer
        queue = consumer.queue
        run.tasks = [asyncio.create_task(run.watchdog())]
        work = self._work_batch if consumer.batch else self._work
        run.tasks += [asyncio.create_task(work(run)) for _ in range(consumer.concurrency)]
        retrier = run.retrier = Retrier(self.log, f'Fetching from queue {queue.name}')
        while not run.stopping.is_set():
            in_hand = run.busy + len(run.buffer)
            if in_hand > run.low_water:  # fetch in large batches, while half the work is still in hand
                run.refill.clear()
                await run.refill.wait()
                continue
            free = run.capacity - in_hand
            try:
                if run.rate is None:
                    deliveries = await self.transport.fetch(queue, free, self.fetch_timeout)
                else:
                    deliveries = await self._fetch_limited(run, free)
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
                run.arrived.set()
                run.wake_one()

    @cached_property
    def limiter(self) -> Limiter:
        """The rate limits of this broker's consumers and agents: the transport's, shared through
        its server, else this broker's own (``ratelimit.LocalLimiter``)."""
        return limiter_of(self.transport)

    async def _fetch_limited(self, run: Running, free: int) -> list[Delivery[Any]]:
        """A rate-limited consumer fetches only what its limit grants now, and waits (fetching
        nothing, holding nothing) while it grants none; grants a fetch did not use go back."""
        assert run.rate is not None
        key, queue = queue_key(run.consumer.queue.name), run.consumer.queue
        granted, wait = await self.limiter.take(key, run.rate, free)
        if not granted:
            await asyncio.sleep(min(wait, self.fetch_timeout))
            return []
        deliveries = await self.transport.fetch(queue, granted, self.fetch_timeout)
        if len(deliveries) < granted:
            try:
                await self.limiter.give_back(key, run.rate, granted - len(deliveries))
            except Exception as exc:  # the fetched messages are kept; the limit is only stricter a while
                self.log.warning('Queue %s: could not give back %d unused grant(s) of its rate: %r',
                                 queue.name, granted - len(deliveries), exc)
        return deliveries

    async def _work(self, run: Running) -> None:
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
                    payload = run.decode(delivery, self.max_message_size)
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
                    run.handled(task)
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

    def _handle_through(self, run: Running, task: asyncio.Task[None], delivery: Delivery[Any],
                        payload: Any, middlewares: tuple[MiddlewareLike, ...]) -> Awaitable[Any]:
        """The handler behind the agent's middlewares; they see the outcome the engine chose (a
        timeout reaches them as ``TimeoutError``, and from them the worker). Not a coroutine itself:
        the worker awaits the chain directly, one frame less per message."""
        consumer = run.consumer
        handling = run.handling(delivery, self.backend)

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
        delay = retry_delay(consumer, delivery)
        handling.failed(exc, Outcome.DEAD_LETTERED if delay is None else Outcome.RETRIED, timed_out=timed_out,
                        retry_delay=delay)

    async def _report_invalid(self, run: Running, delivery: Delivery[Any], exc: InvalidPayload,
                              middlewares: tuple[MiddlewareLike, ...]) -> None:
        """Show the middlewares a message that fails validation: it is dead-lettered unhandled."""
        handling = run.handling(delivery, self.backend)

        async def invalid() -> None:
            handling.failed(exc, Outcome.DEAD_LETTERED)
            raise exc

        try:
            await wrap(middlewares, 'handle', handling, invalid)()
        except InvalidPayload:
            pass
        except Exception:
            self.log.exception('Queue %s: a middleware failed on an invalid message', run.consumer.queue.name)
