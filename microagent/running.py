"""One bound consumer's state while it runs: the fetch loop's buffer, the workers that drain it,
the watchdog that enforces the handler timeout. Shared by the one-message and the batch workers."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from microagent.handlers import Consumer
from microagent.middleware import Site
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
