"""RPC bookkeeping of the bus engine: the answers a caller waits for (``Pending``, ``Answers``),
the answers this bus's receivers owe one request (``Reply``), and ``RemoteError``."""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Generic, TypeVar

import msgspec

from microagent.errors import MicroAgentError
from microagent.signal import Signal

R = TypeVar('R')


class RemoteError(MicroAgentError):
    """An RPC receiver failed: it raised, timed out or returned an invalid answer. Names the signal,
    the receiver (``Agent.method``) and the reason the receiver's bus gave."""

    def __init__(self, signal: str, receiver: str, reason: str) -> None:
        self.signal = signal
        self.receiver = receiver
        self.reason = reason
        super().__init__(f'signal {signal!r}: receiver {receiver} failed: {reason}')


class Expiry:
    """When the RPC calls of one bus stop waiting: one timer at the earliest deadline of the calls
    waiting for an answer, which wakes those whose deadline has come and re-arms at the next one,
    instead of a timer handle per wait (its heap push and cancellation on every call)."""

    __slots__ = ('_loop', '_timer', '_waiting', '_when')

    def __init__(self) -> None:
        self._waiting: dict[Pending, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._when = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, pending: Pending, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting[pending] = deadline
        if self._timer is None or deadline < self._when or self._loop is not loop:
            self._arm(loop, deadline)

    def discard(self, pending: Pending) -> None:
        self._waiting.pop(pending, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._when = loop, when
        self._timer = loop.call_at(when, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        now = max(loop.time(), self._when)  # the loop runs a timer up to its clock resolution early
        self._timer = None
        upcoming: float | None = None
        for pending, deadline in self._waiting.items():
            if deadline <= now:
                _wake(pending.wakeup)
            elif upcoming is None or deadline < upcoming:
                upcoming = deadline
        if upcoming is not None:
            self._arm(loop, upcoming)


class Pending:
    """Answers to one RPC request, collected until the caller stops waiting: pairs of the
    successful answers and the failures (receiver -> reason) of one answering bus."""

    __slots__ = ('answers', 'expiry', 'signal', 'wakeup')

    def __init__(self, signal: Signal[Any, Any], expiry: Expiry | None = None) -> None:
        self.signal = signal
        self.answers: deque[tuple[dict[str, Any], dict[str, str]]] = deque()
        self.wakeup: asyncio.Future[None] | None = None
        self.expiry = expiry or Expiry()

    def put(self, answers: dict[str, Any], errors: dict[str, str]) -> None:
        self.answers.append((answers, errors))
        _wake(self.wakeup)

    async def next(self, deadline: float) -> tuple[dict[str, Any], dict[str, str]] | None:
        """The next answer, or None once the loop's clock passes ``deadline``."""
        if not self.answers:
            loop = asyncio.get_running_loop()
            wakeup = self.wakeup = loop.create_future()
            self.expiry.add(self, deadline, loop)
            try:
                await wakeup
            finally:
                self.expiry.discard(self)
                self.wakeup = None
        return self.answers.popleft() if self.answers else None


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class Reply:
    """The answers of this bus's receivers to one RPC request, sent together once all have run.
    ``errors`` is None for a 1.x request: its caller gets no word of failures, as in 1.x."""

    __slots__ = ('answers', 'errors', 'left', 'reply_to', 'request_id')

    def __init__(self, request_id: str, reply_to: str, left: int, errors: bool) -> None:
        self.request_id = request_id
        self.reply_to = reply_to
        self.answers: dict[str, msgspec.Raw] = {}
        self.errors: dict[str, str] | None = {} if errors else None
        self.left = left


class Answers(Generic[R]):
    """What ``waiter`` yields: iterate over the successful answers, ``{"Agent.method": value}``,
    until the timeout; ``errors`` holds a ``RemoteError`` for each receiver that failed so far."""

    __slots__ = ('deadline', 'errors', 'pending')

    def __init__(self, pending: Pending, deadline: float) -> None:
        self.pending = pending
        self.deadline = deadline
        self.errors: list[RemoteError] = []

    def __aiter__(self) -> Answers[R]:
        return self

    async def __anext__(self) -> dict[str, R]:
        while (item := await self.pending.next(self.deadline)) is not None:
            answers, errors = item
            name = self.pending.signal.name
            self.errors.extend(RemoteError(name, key, reason) for key, reason in errors.items())
            if answers:
                return answers
        raise StopAsyncIteration
