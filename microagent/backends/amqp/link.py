"""RabbitMQ plumbing shared by the broker and the bus: a connection that comes back after a break,
and a publisher (confirms on) that sends again what a break left unconfirmed.

Attempts to connect are spaced by an exponential backoff kept across callers and each failed attempt
logs one line, so a server that is down never causes a tight loop, however many consumers wait.
With several hosts (a cluster, see ``hosts``) a failed attempt or a lost connection moves on to
the next host at once; the backoff starts once every host has failed in a row.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection
from pamqp import commands as spec

from microagent.backends.amqp.hosts import join_hosts, split_hosts
from microagent.dsn import hide_password
from microagent.dsn import scrub as scrub_secrets
from microagent.errors import ConnectionFailed
from microagent.retry import backoff

# Errors that mean "the connection (or the channel with it) went away": worth reconnecting for.
LINK_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError, OSError, aiormq.AMQPConnectionError, aiormq.ChannelInvalidStateError, RuntimeError,
)


PING_PATIENCE = 2.0  # seconds a readiness ping may spend connecting


def check_dsn(dsn: str | Sequence[str]) -> None:
    split_hosts(dsn)


async def passive_declare(channel: AbstractChannel) -> None:
    """A readiness ping: one round trip, the passive declaration of ``amq.direct`` (which every
    RabbitMQ has)."""
    await channel.exchange_declare('amq.direct', passive=True)


class Link:
    """A lazily opened connection: ``connect()`` returns it, opening it again after a break."""

    base_delay = 0.2
    max_delay = 10.0

    def __init__(self, dsn: str | Sequence[str], log: logging.Logger, name: str) -> None:
        self.dsns = split_hosts(dsn)
        self.dsn = join_hosts(self.dsns)
        self.safe_dsn = hide_password(self.dsn)
        self.host = 0  # index in dsns of the host connected to, or to try next
        self.log = log
        self.name = name
        self.generation = 0  # bumped on every new connection: declarations are redone per connection
        self._conn: AbstractConnection | None = None
        self._lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._error = ''
        self._closed = False

    @property
    def connection(self) -> AbstractConnection | None:
        """The open connection, if any."""
        conn = self._conn
        return conn if conn is not None and not conn.is_closed else None

    def scrub(self, error: BaseException | str) -> str:
        """An error as text, without the DSN's secrets (userinfo and query parameters)."""
        text = f'{type(error).__name__}: {error}' if isinstance(error, BaseException) else error
        for dsn in self.dsns:
            text = scrub_secrets(text, dsn)
        return text

    @property
    def safe_host(self) -> str:
        """The DSN of the host connected to (or tried next), without its password."""
        return hide_password(self.dsns[self.host])

    async def connect(self, patience: float | None = None) -> AbstractConnection:
        """The open connection; reconnects with backoff for up to ``patience`` s (None: forever),
        then raises ``ConnectionError``."""
        conn = self.connection
        if conn is not None:
            return conn
        try:
            async with asyncio.timeout(patience):
                return await self._connect()
        except TimeoutError:
            raise ConnectionFailed(f'{self.name}: RabbitMQ at {self.safe_dsn} is unreachable '
                                   f'({self._error or "timed out"})') from None

    async def channel(self, patience: float | None = None, publisher_confirms: bool = False) -> AbstractChannel:
        """A new channel on the open connection (reconnecting first when needed)."""
        while True:
            conn = await self.connect(patience)
            try:
                return await conn.channel(publisher_confirms=publisher_confirms)
            except LINK_ERRORS:
                if not conn.is_closed:
                    raise
                # the connection broke between connect() and channel(): connect again

    async def _connect(self) -> AbstractConnection:
        loop = asyncio.get_running_loop()
        async with self._lock:
            while True:
                conn = self.connection
                if conn is not None:
                    return conn
                if self._closed:
                    raise ConnectionFailed(f'{self.name} is closed')
                wait = self._retry_at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                tried = self.safe_host
                conn = aiormq.Connection(self.dsns[self.host], client_properties={'connection_name': self.name})
                try:
                    await conn.connect()
                except BaseException as exc:
                    with suppress(Exception):
                        await conn.close()  # a half-open connection must not linger
                    if not isinstance(exc, Exception):
                        raise
                    self._failures += 1
                    self.host = (self.host + 1) % len(self.dsns)
                    rounds, rest = divmod(self._failures, len(self.dsns))
                    # the next host at once; after a whole round of failures, back off
                    delay = backoff(rounds, self.base_delay, self.max_delay) if not rest else 0.0
                    self._retry_at = loop.time() + delay
                    self._error = self.scrub(exc)
                    self.log.warning('%s: connecting to RabbitMQ at %s failed (%s); attempt %d, next in %.1fs%s',
                                     self.name, tried, self._error, self._failures, delay,
                                     f' at {self.safe_host}' if len(self.dsns) > 1 else '')
                    continue
                if self.generation:
                    self.log.info('%s: connected to RabbitMQ at %s again', self.name, tried)
                self._failures, self._retry_at, self._error = 0, 0.0, ''
                self.generation += 1
                self._conn = conn
                conn.closing.add_done_callback(partial(self._lost, conn))
                return conn

    def _lost(self, conn: AbstractConnection, closing: asyncio.Future[Any]) -> None:
        reason = None if closing.cancelled() else closing.exception()
        if self._closed or conn is not self._conn:
            return
        lost = self.safe_host
        if len(self.dsns) > 1:  # that node may be going down: fail over to the next one
            self.host = (self.host + 1) % len(self.dsns)
        self.log.warning('%s: lost the connection to RabbitMQ at %s (%s); reconnecting on next use%s',
                         self.name, lost, self.scrub(reason) if reason else 'closed',
                         f', to {self.safe_host}' if len(self.dsns) > 1 else '')

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed:
            await conn.close()


@dataclass(frozen=True)
class Outgoing:
    """One message to publish."""

    exchange: str
    routing_key: str
    body: bytes
    properties: spec.Basic.Properties
    mandatory: bool = False  # unroutable: RabbitMQ returns it and publish raises aiormq.PublishError


def _interrupted(exc: BaseException, channel: AbstractChannel) -> bool:
    """Whether a publish failed because the connection or channel went away (worth sending again),
    rather than because RabbitMQ refused it (a missing exchange, access rights: an error to raise)."""
    if isinstance(exc, aiormq.AMQPConnectionError | ConnectionError | aiormq.ChannelInvalidStateError):
        return True
    return isinstance(exc, asyncio.CancelledError) and channel.is_closed


class Publisher:
    """A channel with publisher confirms that resends what a broken connection did not confirm."""

    def __init__(self, link: Link, reconnect_timeout: float,
                 on_open: Callable[[AbstractChannel], Awaitable[None]] | None = None) -> None:
        self.link = link
        self.reconnect_timeout = reconnect_timeout
        self.on_open = on_open
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()

    async def channel(self, patience: float) -> AbstractChannel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                channel = await self.link.channel(patience, publisher_confirms=True)
                if self.on_open is not None:
                    await self.on_open(channel)
                self._channel = channel
            return self._channel

    async def publish(self, messages: list[Outgoing], what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        pending = messages
        while pending:
            channel = await self.channel(max(deadline - loop.time(), 0.001))
            results: list[Any]
            if len(pending) == 1:
                try:
                    results = [await self._one(channel, pending[0])]
                except Exception as exc:
                    results = [exc]
            else:
                results = await asyncio.gather(*(self._one(channel, out) for out in pending),
                                               return_exceptions=True)
            failed: list[Outgoing] = []
            for out, result in zip(pending, results, strict=True):
                if isinstance(result, BaseException):
                    if not _interrupted(result, channel):
                        raise result
                    failed.append(out)
                elif isinstance(result, spec.Basic.Nack | spec.Basic.Reject):
                    failed.append(out)  # the server could not take it: send again
            if failed and loop.time() >= deadline:
                raise ConnectionFailed(f'{self.link.name}: {len(failed)} message(s) to {what} were not confirmed '
                                       f'by RabbitMQ at {self.link.safe_dsn} in {self.reconnect_timeout}s')
            if failed:
                self.link.log.warning('%s: %d message(s) to %s were not confirmed; sending again',
                                      self.link.name, len(failed), what)
            pending = failed

    @staticmethod
    async def _one(channel: AbstractChannel, out: Outgoing) -> Any:
        return await channel.basic_publish(out.body, exchange=out.exchange, routing_key=out.routing_key,
                                           mandatory=out.mandatory,
                                           properties=out.properties)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await channel.close()
