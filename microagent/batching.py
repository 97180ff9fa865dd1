"""Batch consumers: ``@consumer(q, batch=100, batch_wait=0.5)`` hands its handler a list of up to
100 messages, or what came within half a second, in one call.

A part of the broker engine (``Consuming`` derives from it), beside the one-message worker: the
fetch loop and buffer are the same; a batch worker takes up to ``batch`` deliveries from the buffer,
dead-letters the ones that fail validation on their own, calls the handler once with the rest, and
settles each message on its own: all acknowledged on success; on ``BatchFailed`` the ones it names
retried (on their own attempt count, then dead-lettered), the others acknowledged; on any other
failure or a timeout, each one retried.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from typing import TYPE_CHECKING, Any, cast

from microagent.errors import BatchFailed, InvalidPayload
from microagent.logs import set_handler
from microagent.middleware import active, wrap
from microagent.sends import set_sender
from microagent.settle import Settlement
from microagent.transport import BrokerTransport, Delivery

if TYPE_CHECKING:
    from microagent.running import Running


class Batching(Settlement):
    """The batch worker of the broker engine, over its ``transport``."""

    transport: BrokerTransport[Any]
    log: logging.Logger
    backend: str
    max_message_size: int

    async def _work_batch(self, run: Running) -> None:
        task = cast(asyncio.Task[None], asyncio.current_task())
        consumer, buffer, queue = run.consumer, run.buffer, run.consumer.queue
        size = consumer.batch or 1
        set_sender(consumer.agent)
        set_handler(consumer.agent, consumer.key)
        while True:
            if not buffer:
                if run.stopping.is_set():
                    return
                await run.wait_for_work()
                continue
            await self._fill(run, size, consumer.batch_wait)
            taken = [buffer.popleft() for _ in range(min(size, len(buffer)))]
            if buffer:
                run.wake_one()
            run.busy += len(taken)
            settled: set[int] = set()  # ids of the deliveries settled so far: a stop releases the others
            try:
                await self._handle_batch(run, task, taken, settled)
            except asyncio.CancelledError:
                await self.transport.release(queue, [d for d in taken if id(d) not in settled])
                raise
            finally:
                run.busy -= len(taken)
                if run.busy + len(buffer) <= run.low_water:
                    run.refill.set()

    @staticmethod
    async def _fill(run: Running, size: int, wait: float) -> None:
        """Let the buffer fill up to ``size`` for at most ``wait`` seconds (not while stopping)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while len(run.buffer) < size and not run.stopping.is_set() and (left := deadline - loop.time()) > 0:
            run.arrived.clear()
            run.refill.set()  # the fetch loop may take more now: the batch is not full
            with suppress(TimeoutError):
                await asyncio.wait_for(run.arrived.wait(), left)

    async def _handle_batch(self, run: Running, task: asyncio.Task[None], taken: list[Delivery[Any]],
                            settled: set[int]) -> None:
        consumer, queue = run.consumer, run.consumer.queue
        good: list[tuple[Delivery[Any], Any]] = []
        for delivery in taken:
            try:
                good.append((delivery, run.decode(delivery, self.max_message_size)[0]))
            except InvalidPayload as exc:
                await self._reject(queue, delivery, exc)
                settled.add(id(delivery))
        if not good:
            return
        payloads = [payload for _, payload in good]
        failure: Exception | None = None
        run.deadlines[task] = time.monotonic() + consumer.timeout
        try:
            if middlewares := active(consumer.agent.middlewares):
                async def call() -> Any:
                    return await consumer.handler(payloads)

                await wrap(middlewares, 'handle', run.handling(good[0][0], self.backend), call)()
            else:
                await consumer.handler(payloads)
        except asyncio.CancelledError:
            if task not in run.expired:
                raise
            failure = TimeoutError()
        except Exception as exc:
            failure = exc
        finally:
            run.handled(task)
        if failure is None:
            failed: set[int] = set()
        else:
            failed = _failed_ones(failure, payloads)
            if isinstance(failure, BatchFailed) and isinstance(failure.cause, Exception):
                failure = failure.cause  # the reason of each failed one; a reason in words stays the BatchFailed
        for index, (delivery, _) in enumerate(good):
            if failure is not None and index in failed:
                await self._failed(consumer, delivery, failure)
            else:
                try:
                    await self.transport.ack(queue, delivery)
                except Exception as exc:
                    await self._ack_failed(queue, delivery, exc)
            settled.add(id(delivery))


def _failed_ones(failure: Exception, payloads: list[Any]) -> set[int]:
    """Positions of the batch that failed: those a ``BatchFailed`` names, or all."""
    if isinstance(failure, BatchFailed):
        named = {id(item) for item in failure.failed}
        return {index for index, payload in enumerate(payloads) if id(payload) in named}
    return set(range(len(payloads)))
