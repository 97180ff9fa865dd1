"""Settling a RabbitMQ delivery: where a fetched message lives until it is acked, retried,
dead-lettered or released (``Token``), the 1.x ``amqp`` keyword of a consumer that may settle it
itself (``AMQPMeta``), and waiting for a quorum queue to apply what was given back.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiormq.abc import AbstractChannel
from pamqp import commands as spec

from microagent.backends.amqp.acks import SettledAcks
from microagent.backends.amqp.headers import table

RETURN_WAIT = 5.0  # how long stopping a quorum queue's consumer waits for the queue to take back its messages
RETURN_POLL = 0.01


@dataclass(eq=False)
class Token:
    """Where a fetched message lives until it is settled (acked, retried, dead-lettered, released)."""

    channel: AbstractChannel
    tag: int
    properties: spec.Basic.Properties
    settled: bool = False
    drop: Callable[[str], Awaitable[None]] | None = None  # dead-letters the message with a reason
    acks: SettledAcks | None = None  # its channel's: an ack may wait for the others of a few ms


@dataclass(frozen=True)
class AMQPMeta:
    """The ``amqp`` keyword of a consumer (1.x ``MessageMeta``): the raw delivery. With the consumer
    option ``autoack=False`` the handler settles the message itself with ``ack``/``nack``/``reject``;
    a message refused without ``requeue`` goes to the dead letters, never nowhere."""

    queue: str
    channel: AbstractChannel
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    properties: spec.Basic.Properties
    _token: Token = field(repr=False)

    @property
    def headers(self) -> dict[str, Any]:
        return table(self.properties)

    async def ack(self) -> None:
        await settle(self._token, 'ack')

    async def nack(self, requeue: bool = True) -> None:
        await self._refuse('nack', requeue)

    async def reject(self, requeue: bool = True) -> None:
        await self._refuse('reject', requeue)

    async def _refuse(self, how: str, requeue: bool) -> None:
        if requeue or self._token.drop is None or self._token.settled:
            await settle(self._token, how, requeue)
        else:
            await self._token.drop(f'{how}ed by the handler')


async def settle(token: Token, how: str, requeue: bool = True) -> bool:
    """Settle a delivery once; False when its channel is gone (RabbitMQ redelivers the message)."""
    if token.settled:
        return True
    token.settled = True
    if token.channel.is_closed:
        return False
    acks = token.acks
    if how == 'ack':
        if acks is not None and acks.defer(token.tag):
            return True  # sent within a few milliseconds, with the others settled meanwhile
        await token.channel.basic_ack(token.tag)
    elif how == 'nack':
        await token.channel.basic_nack(token.tag, requeue=requeue)
    else:
        await token.channel.basic_reject(token.tag, requeue=requeue)
    if acks is not None:
        acks.settled_alone(token.tag)
    return True


async def until(done: Callable[[], Awaitable[bool]]) -> bool:
    """Poll the server until ``done`` (for at most RETURN_WAIT): whether it came true. A quorum queue
    applies what a nack or a closed channel gives back through its Raft log, a moment later."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RETURN_WAIT
    while not await done():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(RETURN_POLL)
    return True
