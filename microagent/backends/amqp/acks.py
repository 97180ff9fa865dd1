"""Acknowledging deliveries in batches: one ``multiple`` ack for the deliveries of a short window
instead of one frame each. Delivery tags count from 1 on each channel, and a ``multiple`` ack
covers every unacknowledged tag up to its own, so only a contiguous run of deliveries is ever
acknowledged together.

``BatchedAcks``, for a bus queue, acknowledges a delivery once the engine took it (its backlog had
room), so that RabbitMQ's prefetch bounds what waits in the process: one still waiting for room
(aiormq runs a task per delivery) holds back the acks of those after it. Signals are at most once
and the bus queue is exclusive to the connection: delaying an ack by a few milliseconds changes no
delivery, only how many frames go to the server. ``SettledAcks``, for a work queue's consumer,
whose handlers finish out of order: see its docstring.
"""
from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any

from aiormq.abc import AbstractChannel

__all__ = ['BatchedAcks', 'SettledAcks']


class _Window:
    """What both kinds share: the contiguous run of tags that are done, the window's timer, and the
    ``multiple`` acks on their way."""

    #: seconds an ack may wait, gathering the others of the window
    delay = 0.002

    def __init__(self, channel: AbstractChannel, eager: int) -> None:
        self.channel = channel
        self.eager = max(eager, 1)  # this many waiting acks are sent at once, without waiting for the window
        self.upto = 0  # every tag up to this one is done
        self.later: set[int] = set()  # done after a gap
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[Any]] = set()

    def _done(self, tag: int) -> bool:
        """Record ``tag`` as done; whether it follows every earlier one (the run grew)."""
        if tag != self.upto + 1:
            self.later.add(tag)
            return False
        upto, later = tag, self.later
        while later and upto + 1 in later:
            upto += 1
            later.discard(upto)
        self.upto = upto
        return True

    def _wait(self, waiting: int) -> None:
        """``waiting`` acks wait: send them now when they are ``eager`` many, else when the window ends."""
        if waiting >= self.eager:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.flush)

    def flush(self) -> None:
        raise NotImplementedError

    def _send(self, tag: int) -> None:
        """Acknowledge every unacknowledged delivery up to ``tag``, in the background."""
        task = asyncio.ensure_future(self._ack(tag))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _ack(self, tag: int) -> None:
        with suppress(Exception):  # a closed channel: RabbitMQ forgets or redelivers with it
            await self.channel.basic_ack(tag, multiple=True)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """The channel is closing: no window to wait for."""
        self._stop_timer()


class BatchedAcks(_Window):
    """The acks of a bus queue's channel: every delivery the engine took."""

    def __init__(self, channel: AbstractChannel, eager: int) -> None:
        super().__init__(channel, eager)
        self.sent = 0  # acknowledged up to this tag

    def take(self, tag: int) -> None:
        """The delivery ``tag`` is taken by the engine (or dropped): it may be acknowledged."""
        if self._done(tag):
            self._wait(self.upto - self.sent)

    def flush(self) -> None:
        self._stop_timer()
        if self.upto > self.sent and not self.channel.is_closed:
            self.sent = self.upto
            self._send(self.upto)


class SettledAcks(_Window):
    """The acks of one consumer channel of a work queue, where handlers finish out of order: a
    delivery settled right after every earlier one (the common case: a worker takes the oldest
    buffered message) has its ack sent with the others settled within ``delay``, as one
    ``multiple`` ack; one settled while an earlier delivery is still in hand is acknowledged alone,
    at once, so a slow handler never holds back the acks of the others (nor, through the prefetch
    count, the deliveries after them). A ``multiple`` ack names the newest delivery it acknowledges,
    which is still unacknowledged (RabbitMQ refuses a tag it no longer knows)."""

    def __init__(self, channel: AbstractChannel, eager: int) -> None:
        super().__init__(channel, eager)
        self.waiting = 0  # the newest tag whose ack waits for the window (0: none)
        self.count = 0  # how many acks wait

    def defer(self, tag: int) -> bool:
        """Whether the ack of ``tag`` can wait for the window's ``multiple`` ack (it follows every
        earlier delivery); if not, the caller acknowledges it alone and calls ``settled_alone``."""
        if tag != self.upto + 1:
            return False
        self.waiting = tag
        self.count += 1
        self._done(tag)
        self._wait(self.count)
        return True

    def settled_alone(self, tag: int) -> None:
        """``tag`` was settled on its own (acked after a gap, rejected, requeued)."""
        self._done(tag)

    def flush(self) -> None:
        self._stop_timer()
        tag, self.waiting, self.count = self.waiting, 0, 0
        if tag and not self.channel.is_closed:
            self._send(tag)

    async def send_now(self) -> None:
        """Send the waiting ack and wait until it is written (before the channel closes, else
        RabbitMQ would deliver those messages again)."""
        self.flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
