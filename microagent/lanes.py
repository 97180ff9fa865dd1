"""A receiver's lane in the bus: the signals it has yet to handle, and its idle workers.

A worker that runs out of signals does not end at once: it waits up to ``IDLE`` seconds for the
next one, so a steady stream of signals arriving one at a time (each finding the lane empty) wakes
a waiting worker instead of creating a task per signal. The most recently idle worker is woken
first, so the others age out; one timer per lane, ticking while a worker waits, ends those idle
for ``IDLE`` to twice ``IDLE`` seconds. An idle receiver keeps no task and no timer.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from microagent.handlers import Receiver
    from microagent.message import Incoming
    from microagent.rpc import Reply

    #: a signal waiting in a lane: payload, sender, the reply of an RPC request, the message
    Item = tuple[Any, str, Reply | None, Incoming]

#: an idle worker waits this many seconds (to twice that) for the next signal of its lane, then ends
IDLE = 1.0


class Lane:
    """The signals one receiver has yet to handle, drained by at most ``concurrency`` workers."""

    __slots__ = ('_idle', '_retired', '_tick', '_timer', 'backlog', 'receiver', 'workers')

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        # (payload, sender, reply, the message, read from its headers on first use)
        self.backlog: deque[Item] = deque()
        self.workers = 0  # running or idle
        # (the tick it began waiting at, its waiter, the worker)
        self._idle: deque[tuple[int, asyncio.Future[bool], asyncio.Task[Any]]] = deque()
        self._tick = 0
        self._timer: asyncio.TimerHandle | None = None
        self._retired = False

    def wait(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> asyncio.Future[bool]:
        """An idle worker's wait for more signals: True when woken for one, False when it should end."""
        waiter: asyncio.Future[bool] = loop.create_future()
        if self._retired:
            waiter.set_result(False)
            return waiter
        self._idle.append((self._tick, waiter, task))
        if self._timer is None:
            self._timer = loop.call_later(IDLE, self._age, loop)
        return waiter

    def wake(self) -> bool:
        """Wake the most recently idle worker for a new signal; False when none waits."""
        idle = self._idle
        while idle:
            waiter = idle.pop()[1]
            if not waiter.done():
                waiter.set_result(True)
                return True
        return False

    def idle_tasks(self) -> set[asyncio.Task[Any]]:
        return {task for _, waiter, task in self._idle if not waiter.done()}

    def retire(self) -> None:
        """End every idle worker, and each worker once it is idle (the receiver is unbound, or the
        bus closes)."""
        self._retired = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._idle:
            waiter = self._idle.popleft()[1]
            if not waiter.done():
                waiter.set_result(False)

    def _age(self, loop: asyncio.AbstractEventLoop) -> None:
        """Every ``IDLE`` seconds while a worker waits: end those that already waited at the previous
        tick (idle for ``IDLE`` to twice that), without reading the clock on every wait."""
        self._tick += 1
        self._timer = None
        idle = self._idle
        while idle and (idle[0][1].done() or idle[0][0] < self._tick - 1):
            waiter = idle.popleft()[1]
            if not waiter.done():
                waiter.set_result(False)
        if idle:
            self._timer = loop.call_later(IDLE, self._age, loop)
