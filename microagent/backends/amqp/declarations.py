"""Declaring a RabbitMQ queue's layout: the queue (bound to its exchange), its dead-letter exchange
and queue, and the delay queues of its retries, with the arguments of its type (``queue_args``), on
a control channel that is opened again after a break. ``QueueDeclarations`` is the base of the queue
transport: it remembers what it declared on the current connection, and for teardown.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import aiormq
from aiormq.abc import AbstractChannel
from pamqp.common import FieldTable

from microagent.backends.amqp.dead_letters import DEAD_SUFFIX
from microagent.backends.amqp.limits import RETRY_QUEUE_IDLE, check_delay
from microagent.backends.amqp.link import LINK_ERRORS, Link
from microagent.backends.amqp.queue_args import QueueArguments, declaration_error, existing_type, server_version
from microagent.errors import DeclarationError
from microagent.exchange import Exchange
from microagent.queue import Queue, QueueType, check_delivery_limit, check_queue_type

_R = TypeVar('_R')

RETRY_SUFFIX = '.retry.'


class QueueDeclarations:
    """Queues, exchanges and delay queues declared on RabbitMQ through a connection named ``name``,
    with the broker's default ``queue_type`` and ``delivery_limit`` for queues whose declaration
    does not say."""

    def __init__(self, dsn: str | Sequence[str], log: logging.Logger, name: str, reconnect_timeout: float,
                 queue_type: QueueType, delivery_limit: int | None) -> None:
        self.log = log
        self.reconnect_timeout = reconnect_timeout
        self.queue_type: QueueType = check_queue_type(queue_type, 'AMQP broker') or 'classic'
        self.delivery_limit = check_delivery_limit(delivery_limit, 'AMQP broker')
        self._link = Link(dsn, self.log, name)
        self._arguments: dict[str, QueueArguments] = {}
        self._control: AbstractChannel | None = None
        self._control_lock = asyncio.Lock()
        self._declared: set[str] = set()
        self._declared_generation = 0
        self._retry_queues: dict[str, float] = {}
        self.declared_queues: set[str] = set()  # every name declared by this transport, for teardown
        self.declared_exchanges: set[str] = set()

    # channels

    async def _ctl(self, patience: float | None = None) -> AbstractChannel:
        """The control channel (declarations, counts). A channel error closes it; it is reopened."""
        if self._control is None or self._control.is_closed:
            self._control = await self._link.channel(self.reconnect_timeout if patience is None else patience)
        return self._control

    async def _on_control(self, work: Callable[[AbstractChannel], Awaitable[_R]], patience: float | None = None) -> _R:
        """Run ``work`` on the control channel, under its lock. When the connection breaks under it
        (closed by the server, a restart), run it again on a new connection, within ``patience``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.reconnect_timeout if patience is None else patience)
        async with self._control_lock:
            while True:
                ch = await self._ctl(max(deadline - loop.time(), 0.001))
                try:
                    return await work(ch)
                except LINK_ERRORS as exc:
                    if not ch.is_closed or loop.time() >= deadline:
                        raise
                    self.log.info('%s: the connection broke during a declaration or count (%s); doing it again',
                                  self._link.name, self._link.scrub(exc))

    def _fresh_connection(self) -> None:
        if self._declared_generation != self._link.generation:
            self._declared_generation = self._link.generation
            self._declared.clear()
            self._retry_queues.clear()

    # declarations

    async def declare(self, queue: Queue[Any]) -> None:
        await self._declare(queue, self.reconnect_timeout)

    async def _declare(self, queue: Queue[Any], patience: float) -> None:
        self._fresh_connection()
        if queue.name in self._declared:
            return
        await self._on_control(partial(self._declare_on, queue), patience)

    def arguments(self, queue: Queue[Any], version: tuple[int, ...] = (0,)) -> QueueArguments:
        """How ``queue`` is declared: its own type and limit, else this broker's defaults."""
        queue_type = queue.queue_type or self.queue_type
        limit = queue.delivery_limit if queue.delivery_limit is not None else self.delivery_limit
        if queue_type == 'classic' and queue.delivery_limit is not None:
            raise DeclarationError(f'queue {queue.name!r}: delivery_limit needs a quorum queue (queue_type=\'quorum\')')
        if queue_type == 'quorum' and queue.priorities is not None:
            raise DeclarationError(f'queue {queue.name!r}: priorities need a classic queue on RabbitMQ '
                                   "(queue_type='classic'): a quorum queue has two levels served 2:1, not strict "
                                   'priority')
        return QueueArguments(queue_type, limit, version, queue.priorities)

    async def _declare_on(self, queue: Queue[Any], ch: AbstractChannel) -> None:
        """Declare the queue, its dead letters and its exchange binding (the control lock is held)."""
        self._fresh_connection()
        if queue.name in self._declared:
            return
        name, dead = queue.name, queue.name + DEAD_SUFFIX
        args = self.arguments(queue, server_version(ch.connection.server_properties))
        await self._queue_declare(ch, name, args, args.main(dead))
        await ch.exchange_declare(dead, exchange_type='fanout', durable=True)
        await self._queue_declare(ch, dead, args, args.dead())
        await ch.queue_bind(dead, dead)
        self._arguments[name] = args
        self.declared_queues.update((name, dead))
        self.declared_exchanges.add(dead)
        exchange = queue.exchange_declaration
        if exchange is not None:
            await self._declare_exchange(ch, exchange, f'queue {name!r}: ')
            keys = (queue.topics or ('#',)) if exchange.type == 'topic' else ('',)
            for key in keys:
                await ch.queue_bind(name, exchange.name, routing_key=key)
        self._declared.add(name)

    async def _queue_declare(self, ch: AbstractChannel, name: str, wanted: QueueArguments,
                             arguments: FieldTable | None) -> None:
        try:
            await ch.queue_declare(name, durable=True, arguments=arguments)
        except aiormq.ChannelPreconditionFailed as exc:
            existing = existing_type(exc) or await self._existing_type(name)
            raise declaration_error(name, wanted, exc, existing) from None

    async def _existing_type(self, name: str) -> str | None:
        """The type of an existing queue that refused a declaration: RabbitMQ names the first
        argument that differs, often not the type. An argument-less declaration tells: a classic
        queue without arguments takes it (a no-op), any other names its type or another argument."""
        channel = await self._link.channel(self.reconnect_timeout)
        try:
            await channel.queue_declare(name, durable=True)
        except aiormq.ChannelPreconditionFailed as exc:
            return existing_type(exc)
        finally:
            if not channel.is_closed:
                await channel.close()
        return 'classic'

    async def _declare_exchange(self, ch: AbstractChannel, exchange: Exchange, where: str) -> None:
        """Declare the exchange with its declared type, never one guessed from other queues."""
        try:
            await ch.exchange_declare(exchange.name, exchange_type=exchange.type, durable=True)
        except aiormq.ChannelPreconditionFailed as exc:
            raise DeclarationError(f'{where}exchange {exchange.name!r} exists on RabbitMQ with another type or '
                                   f'options than a durable {exchange.type} exchange: {exc}') from None
        self.declared_exchanges.add(exchange.name)

    async def _retry_queue(self, queue: Queue[Any], delay: float) -> str:
        name = queue.name
        ms = check_delay(delay, f'queue {name!r}')
        retry = f'{name}{RETRY_SUFFIX}{ms}'
        now = time.monotonic()
        self._fresh_connection()
        if now - self._retry_queues.get(retry, -RETRY_QUEUE_IDLE) < RETRY_QUEUE_IDLE / 2:
            return retry  # declared recently: its expiry lease is still long enough
        args = self._arguments.get(name) or self.arguments(queue)
        arguments = args.retry(name, ms, ms + int(RETRY_QUEUE_IDLE * 1000))
        await self._on_control(lambda ch: self._queue_declare(ch, retry, args, arguments))
        self._retry_queues[retry] = now
        self.declared_queues.add(retry)
        return retry
