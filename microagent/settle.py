"""Settling a delivery the engine could not simply ack: retry with backoff or dead-letter a failed
handling, dead-letter an invalid message, and when a settle call itself fails, try it again, then
give the message back to the queue, so no message stays in hand while the consumer lives.

``Settlement`` is a part of the broker engine (``AbstractQueueBroker`` derives from it), kept apart
because it is the delivery policy written once, read on its own.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from microagent.errors import InvalidPayload
from microagent.handlers import Consumer
from microagent.logs import failure_fields, message_fields
from microagent.queue import Queue
from microagent.retry import backoff
from microagent.transport import BrokerTransport, Delivery

SETTLE_TRIES = 4  # a failed ack, retry or dead-letter is tried this often in all, then the message is released


class Settlement:
    """The broker's settling of deliveries, over its ``transport`` and ``log``."""

    transport: BrokerTransport[Any]
    log: logging.Logger

    async def _ack_failed(self, queue: Queue[Any], delivery: Delivery[Any], exc: Exception) -> None:
        await self._settle_failed(queue, delivery, 'ack', exc, partial(self.transport.ack, queue, delivery))

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
        delay = retry_delay(consumer, delivery)
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


def _seconds(delay: float) -> str:
    """``4.0``, ``0.25``, ``0.01``: a retry delay as a person reads it."""
    return f'{delay:.1f}' if delay >= 1 else f'{delay:.2g}'


def retry_delay(consumer: Consumer, delivery: Delivery[Any]) -> float | None:
    """Seconds until the failed message's next attempt; None when it is dead-lettered instead."""
    if delivery.attempt <= consumer.max_retries:
        return backoff(delivery.attempt, consumer.retry_delay)
    return None
