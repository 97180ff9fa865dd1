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


class Pending:
    """Answers to one RPC request, collected until the caller stops waiting: pairs of the
    successful answers and the failures (receiver -> reason) of one answering bus."""

    __slots__ = ('answers', 'signal', 'wakeup')

    def __init__(self, signal: Signal[Any, Any]) -> None:
        self.signal = signal
        self.answers: deque[tuple[dict[str, Any], dict[str, str]]] = deque()
        self.wakeup: asyncio.Future[None] | None = None

    def put(self, answers: dict[str, Any], errors: dict[str, str]) -> None:
        self.answers.append((answers, errors))
        _wake(self.wakeup)

    async def next(self, deadline: float) -> tuple[dict[str, Any], dict[str, str]] | None:
        """The next answer, or None once the loop's clock passes ``deadline``."""
        if not self.answers:
            loop = asyncio.get_running_loop()
            wakeup = self.wakeup = loop.create_future()
            timer = loop.call_at(deadline, _wake, wakeup)
            try:
                await wakeup
            finally:
                timer.cancel()
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
