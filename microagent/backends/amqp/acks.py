"""Acknowledging a bus queue's deliveries in batches: one ``multiple`` ack for every delivery handed
to the engine within a short window, instead of one frame per signal.

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
