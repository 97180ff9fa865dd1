"""Acknowledging deliveries in batches: one ``multiple`` ack for the deliveries of a short window
instead of one frame each. ``BatchedAcks`` for a bus queue (below); ``SettledAcks`` for a work
queue's consumer, whose handlers settle out of order (see its docstring).

The bus acknowledges a delivery only once the engine took it (its backlog had room), so that
RabbitMQ's prefetch bounds what waits in the process. A ``multiple`` ack covers every tag up to
its own, so only the contiguous run of taken deliveries is acknowledged: one still waiting for
room (aiormq runs a task per delivery) holds back the acks of those after it. Signals are at most
once and the bus queue is exclusive to the connection: delaying an ack by a few milliseconds
changes no delivery, only how many frames go to the server.
"""
from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any

from aiormq.abc import AbstractChannel

__all__ = ['BatchedAcks']


class BatchedAcks:
    """The acks of one channel (delivery tags count from 1 on each channel)."""

    #: seconds a taken delivery may wait for its ack, gathering the others taken meanwhile
    delay = 0.002

    def __init__(self, channel: AbstractChannel, eager: int) -> None:
        self.channel = channel
        self.eager = eager  # this many waiting acks are sent at once, without waiting for the window
        self.upto = 0  # every tag up to this one is taken
        self.sent = 0  # acknowledged up to this tag
        self.taken: set[int] = set()  # taken, after a gap
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[Any]] = set()

    def take(self, tag: int) -> None:
        """The delivery ``tag`` is taken by the engine (or dropped): it may be acknowledged."""
        if tag != self.upto + 1:
            self.taken.add(tag)
            return
        self.upto = upto = tag
        taken = self.taken
        while taken and upto + 1 in taken:
            upto += 1
            taken.discard(upto)
        self.upto = upto
        if upto - self.sent >= self.eager:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.upto <= self.sent or self.channel.is_closed:
            return
        self.sent = self.upto
        task = asyncio.ensure_future(self._ack(self.upto))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _ack(self, tag: int) -> None:
        with suppress(Exception):  # a closed channel: RabbitMQ forgets it with the exclusive queue
            await self.channel.basic_ack(tag, multiple=True)

    def close(self) -> None:
        """Stop the window's timer (the channel is closing: nothing left to acknowledge)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class SettledAcks:
    """The acks of one consumer channel of a work queue, where handlers finish out of order: a
    delivery settled right after every earlier one (the common case: a worker takes the oldest
    buffered message) has its ack sent with the others settled within ``delay``, as one
    ``multiple`` ack; one settled while an earlier delivery is still in hand is acknowledged alone,
    at once, so a slow handler never holds back the acks of the others (nor, through the prefetch
    count, the deliveries after them). A ``multiple`` ack names the newest delivery it acknowledges,
    which is still unacknowledged (RabbitMQ refuses a tag it no longer knows)."""

    delay = BatchedAcks.delay

    def __init__(self, channel: AbstractChannel, eager: int) -> None:
        self.channel = channel
        self.eager = max(eager, 1)
        self.upto = 0  # every delivery up to this tag is settled or waits for the coming ack
        self.waiting = 0  # the newest tag that waits for the coming ack (0: none)
        self.count = 0  # how many wait for it
        self.settled: set[int] = set()  # settled alone, after a gap
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[Any]] = set()

    def defer(self, tag: int) -> bool:
        """Whether the ack of ``tag`` can wait for the coming ``multiple`` ack (it follows every
        earlier delivery); if not, the caller acknowledges it alone and calls ``settled_alone``."""
        if tag != self.upto + 1:
            return False
        self.waiting = tag
        self.count += 1
        self._advance(tag)
        if self.count >= self.eager:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.flush)
        return True

    def settled_alone(self, tag: int) -> None:
        """``tag`` was settled on its own (acked after a gap, rejected, requeued)."""
        if tag == self.upto + 1:
            self._advance(tag)
        else:
            self.settled.add(tag)

    def _advance(self, tag: int) -> None:
        upto, settled = tag, self.settled
        while settled and upto + 1 in settled:
            upto += 1
            settled.discard(upto)
        self.upto = upto

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tag, self.waiting, self.count = self.waiting, 0, 0
        if not tag or self.channel.is_closed:
            return
        task = asyncio.ensure_future(self._ack(tag))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _ack(self, tag: int) -> None:
        with suppress(Exception):  # a closed channel: RabbitMQ delivers its unacked messages again
            await self.channel.basic_ack(tag, multiple=True)

    async def send_now(self) -> None:
        """Send the waiting ack and wait until it is written (before the channel closes, else
        RabbitMQ would deliver those messages again)."""
        self.flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def close(self) -> None:
        """Stop the window's timer (the channel is closed: what waited is delivered again)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
