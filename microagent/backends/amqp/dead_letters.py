"""The dead letters of a RabbitMQ queue ``mailer``: the durable queue ``mailer.dead`` (fed by the
fanout exchange of that name), read by taking its messages and giving them back in their order, and
emptied by acking the removed ones. A letter's reason, attempt count and time travel in the backend's
headers, or, dead-lettered by RabbitMQ itself (a quorum queue's delivery limit), in ``x-death``.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from microagent.backends.amqp.headers import (
    ATTEMPT_HEADER,
    DEAD_AT_HEADER,
    DEATH_HEADER,
    REASON_HEADER,
    carried,
    fresh_table,
    received_headers,
    table,
)
from microagent.backends.amqp.link import Link, Outgoing, Publisher
from microagent.backends.amqp.settle import until
from microagent.message import Envelope
from microagent.transport import DeadLetter, SelectDeadLetter

DEAD_SUFFIX = '.dead'


class DeadLetterQueues:
    """Reading, requeueing and removing the dead letters of queues, on channels of their own.
    ``count`` tells how many messages a queue holds; ``patience`` how long to wait for a channel."""

    def __init__(self, link: Link, publisher: Publisher, count: Callable[[str], Awaitable[int]],
                 patience: Callable[[], float]) -> None:
        self._link = link
        self._publisher = publisher
        self._count = count
        self._patience = patience

    async def _channel(self) -> AbstractChannel:
        return await self._link.channel(self._patience())

    async def look(self, name: str, limit: int) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of queue ``name``, left where they are."""
        if limit <= 0:
            return []
        before = await self._count(name + DEAD_SUFFIX)
        channel = await self._channel()
        letters: list[DeadLetter] = []
        try:
            last = 0
            for _ in range(limit):
                try:
                    message = await channel.basic_get(name + DEAD_SUFFIX)
                except aiormq.ChannelNotFoundEntity:
                    return []
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                last = message.delivery_tag or last
                letters.append(dead_letter(name, message))
            if last:
                await channel.basic_nack(last, multiple=True, requeue=True)  # only looked at
        finally:
            if not channel.is_closed:
                await channel.close()
        if letters:
            await self._back(name + DEAD_SUFFIX, before)
        return letters

    async def _back(self, name: str, count: int) -> None:
        """Wait until ``name`` counts ``count`` messages again, after returning what was taken: a
        quorum queue applies returns through its Raft log, after the nack (bounded by RETURN_WAIT)."""
        async def back() -> bool:
            return await self._count(name) >= count

        await until(back)

    async def requeue(self, name: str) -> int:
        """Move every dead letter of queue ``name`` back to it, in batches; how many moved."""
        total = await self._count(name + DEAD_SUFFIX)
        moved = 0
        channel = await self._channel()
        try:
            while moved < total:
                batch: list[DeliveredMessage] = []
                while moved + len(batch) < total and len(batch) < 100:
                    message = await channel.basic_get(name + DEAD_SUFFIX)
                    if not isinstance(message.delivery, spec.Basic.GetOk):
                        break
                    batch.append(message)
                if not batch:
                    break
                await self._publisher.publish(
                    [Outgoing('', name, m.body, carried(m.header.properties, fresh_table(m.header.properties)))
                     for m in batch], f'queue {name!r}')
                await channel.basic_ack(batch[-1].delivery_tag or 0, multiple=True)
                moved += len(batch)
        finally:
            if not channel.is_closed:
                await channel.close()
        return moved

    async def remove(self, name: str, select: SelectDeadLetter, *, requeue: bool) -> int:
        """Get every dead letter (the count when asked), publish the picked ones back when
        ``requeue``, ack them, and return the others to the dead-letter queue in their order."""
        total = await self._count(name + DEAD_SUFFIX)
        channel = await self._channel()
        try:
            taken: list[DeliveredMessage] = []
            last = got = 0
            for position in range(total):
                message = await channel.basic_get(name + DEAD_SUFFIX)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                last, got = message.delivery_tag or last, got + 1
                if select(position, dead_letter(name, message)):
                    taken.append(message)
            if requeue and taken:
                await self._publisher.publish(
                    [Outgoing('', name, m.body, carried(m.header.properties, fresh_table(m.header.properties)))
                     for m in taken], f'queue {name!r}')
            for message in taken:
                await channel.basic_ack(message.delivery_tag or 0)
            if last and len(taken) < got:  # the others, unacked, go back in their order
                await channel.basic_nack(last, multiple=True, requeue=True)
        finally:
            if not channel.is_closed:
                await channel.close()
        if len(taken) < got:
            await self._back(name + DEAD_SUFFIX, total - len(taken))
        return len(taken)


def dead_letter(name: str, message: DeliveredMessage) -> DeadLetter:
    properties = message.header.properties
    headers_table = table(properties)
    reason = headers_table.get(REASON_HEADER, '')
    if isinstance(reason, bytes):
        reason = reason.decode('utf-8', 'replace')
    try:
        attempts = int(headers_table.get(ATTEMPT_HEADER, 1))
        died = float(headers_table.get(DEAD_AT_HEADER, 0.0))
    except (TypeError, ValueError):
        attempts, died = 1, 0.0
    if DEAD_AT_HEADER not in headers_table:  # dead-lettered by RabbitMQ itself (a quorum queue's delivery limit)
        reason, died = server_death(headers_table) or (reason, died)
    headers = received_headers(properties)
    return DeadLetter(name, Envelope(message.body, headers or None), str(reason), attempts, died)


def server_death(headers_table: Mapping[str, Any]) -> tuple[str, float] | None:
    """(reason, time) of RabbitMQ's own dead-lettering, from its ``x-death`` header."""
    deaths = headers_table.get(DEATH_HEADER)
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return None
    death = deaths[0]
    why = death.get('reason')
    why = why.decode('utf-8', 'replace') if isinstance(why, bytes) else str(why or '')
    when = death.get('time')
    died = when.timestamp() if isinstance(when, datetime) else 0.0
    if why == 'delivery_limit':
        return ('returned unacknowledged more often than the delivery limit of the quorum queue (a consumer '
                'crashed or lost its connection while holding it)', died)
    return (f'dead-lettered by RabbitMQ: {why}', died)
