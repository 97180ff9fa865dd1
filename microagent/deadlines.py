"""The deadlines of a receiver's calls: one timer for all the calls of one receiver, not one per call.

A receiver's calls share one timeout, so their deadlines come in the order the calls start, and one
timer armed at the earliest deadline of the calls under way is enough: when it fires it cancels the
calls whose deadline has come (each reports a ``TimeoutError``, as ``asyncio.timeout`` would) and
re-arms at the next deadline, or stays off until a call starts. A call that returns only forgets its
deadline. A timer per call cost a timer handle, its heap push and its cancellation on every signal,
and the cancelled handles piled up in the event loop's heap for the whole timeout (a minute by
default), so that every other timer paid comparisons against them.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar('T')


class Deadlines:
    """The calls of one receiver under way and when each must end (None once cancelled for it)."""

    __slots__ = ('_calls', '_loop', '_timer', '_when', 'timeout')

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._calls: dict[asyncio.Task[Any], float | None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._when = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, awaitable: Awaitable[T]) -> T:
        """``await`` under the timeout: ``asyncio.timeout``'s semantics (the awaiting task is
        cancelled at the deadline, and a ``TimeoutError`` raised instead) with a shared timer."""
        task = asyncio.current_task()
        assert task is not None
        calls = self._calls
        if task in calls:  # the same task within a call of the same receiver: a timer of its own
            return await _with_timer(awaitable, self.timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._timer is None or deadline < self._when or self._loop is not loop:
            self._arm(loop, deadline)
        calls[task] = deadline
        try:
            return await awaitable
        except asyncio.CancelledError:
            if calls[task] is None and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            del calls[task]

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._when = loop, when
        self._timer = loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """Cancel the calls whose deadline has come; re-arm at the next one, if any."""
        loop = self._loop
        assert loop is not None
        now = max(loop.time(), self._when)  # the loop runs a timer up to its clock resolution early
        self._timer = None
        upcoming: float | None = None
        calls = self._calls
        for task, deadline in calls.items():
            if deadline is None:
                continue
            if deadline <= now:
                calls[task] = None
                task.cancel()
            elif upcoming is None or deadline < upcoming:
                upcoming = deadline
        if upcoming is not None:
            self._arm(loop, upcoming)


async def _with_timer(awaitable: Awaitable[T], timeout: float) -> T:
    """``await`` under a deadline of its own: one timer handle, no context manager."""
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if expired and task.uncancel() == 0:
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()
