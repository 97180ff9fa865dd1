"""One bound consumer's state while it runs: the fetch loop's buffer, the workers that drain it,
the watchdog that enforces the handler timeout. Shared by the one-message and the batch workers."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from microagent.errors import InvalidPayload
from microagent.handlers import Consumer
from microagent.middleware import Handling, Site
from microagent.payload import check_size, undecodable
from microagent.retry import Retrier
from microagent.transport import Delivery


class Running:
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
        self.arrived = asyncio.Event()  # set when a fetch adds to the buffer (a batch waiting to fill)
        self.capacity = consumer.concurrency + consumer.prefetch
        self.rate = consumer.rate  # None: no limit, and the fetch loop pays nothing for it
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

    def decode(self, delivery: Delivery[Any], max_message_size: int) -> tuple[Any, Any]:
        """The delivery's payload (and DTO), or ``InvalidPayload`` saying why it cannot be handled."""
        consumer = self.consumer
        try:
            body = delivery.envelope.body
            if len(body) > max_message_size:  # the target's name is formatted only when it raises
                check_size(f'queue {consumer.queue.name!r}', body, max_message_size)
            if consumer.screens:
                consumer.screen(delivery)
            return consumer.decode(body)
        except InvalidPayload:
            raise
        except Exception as exc:  # a custom decode: whatever it raises, the message cannot be handled
            raise undecodable(f'queue {consumer.queue.name!r}', exc) from None

    def handling(self, delivery: Delivery[Any], backend: str) -> Handling:
        """A handling of ``delivery`` as middlewares see it (the consumer's ``Site`` made once)."""
        if self.site is None:
            consumer = self.consumer
            self.site = Site(consumer.kind, type(consumer.agent).__name__, consumer.key, consumer.target,
                             backend, consumer.max_retries)
        return Handling(self.site, delivery, delivery.attempt)

    def handled(self, task: asyncio.Task[Any]) -> None:
        """A worker's timed call is over: forget its deadline, and consume here a watchdog's cancel
        that came meanwhile (not at the worker's next await)."""
        del self.deadlines[task]
        if task in self.expired:
            self.expired.discard(task)
            task.uncancel()

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
