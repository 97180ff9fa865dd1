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

from microagent.backends.amqp.hosts import join_hosts, login, split_hosts
from microagent.backends.amqp.limits import MessageRefused, check_frames, refusal
from microagent.dsn import hide_password
from microagent.dsn import scrub as scrub_secrets
from microagent.errors import ConnectionFailed
from microagent.retry import backoff

# Errors that mean "the connection (or the channel with it) went away": worth reconnecting for.
LINK_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError, OSError, aiormq.AMQPConnectionError, aiormq.ChannelInvalidStateError, RuntimeError,
)


PING_PATIENCE = 2.0  # seconds a readiness ping may spend connecting


def refused_login(exc: BaseException, dsn: str) -> str | None:
    """Why RabbitMQ refused to open a connection for ``dsn`` when it did (a wrong user or password,
    a vhost that does not exist or is not open to the user), naming user and vhost; else None."""
    user, vhost = login(dsn)
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return f'authentication refused for user {user!r} (wrong user name or password?) on vhost {vhost!r}'
    # refused at Connection.Open: aiormq reports an unexpected Connection.Close (NOT_ALLOWED, 530)
    if (isinstance(exc, aiormq.exceptions.ConnectionNotAllowed)
            or (isinstance(exc, aiormq.exceptions.InvalidFrameError) and 'Connection.Close' in str(exc))):
        return f'vhost {vhost!r} not found, or not open to user {user!r}'
    return None


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
        self._refusals = 0  # connections refused in a row (login, vhost): a setting to fix, not a break
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
                    refused = refused_login(exc, self.dsns[(self.host - 1) % len(self.dsns)])
                    self._refusals = self._refusals + 1 if refused else 0
                    self._error = refused or self.scrub(exc)
                    self.log.warning('%s: connecting to RabbitMQ at %s failed (%s); attempt %d, next in %.1fs%s',
                                     self.name, tried, self._error, self._failures, delay,
                                     f' at {self.safe_host}' if len(self.dsns) > 1 else '')
                    if self._refusals >= len(self.dsns):  # every host refused: waiting will not help
                        raise ConnectionFailed(f'{self.name}: RabbitMQ at {self.safe_dsn} refused the connection: '
                                               f'{refused}') from None
                    continue
                if self.generation:
                    self.log.info('%s: connected to RabbitMQ at %s again', self.name, tried)
                self._failures, self._retry_at, self._error, self._refusals = 0, 0.0, '', 0
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


def _frame_max(channel: AbstractChannel) -> int:
    """The frame size negotiated on the channel's connection (0: none known)."""
    tune = getattr(channel.connection, 'connection_tune', None)
    return int(getattr(tune, 'frame_max', 0) or 0)


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

    async def frame_max(self) -> int:
        """The frame size negotiated on the publishing connection (0: none known)."""
        return _frame_max(await self.channel(self.reconnect_timeout))

    async def publish(self, messages: list[Outgoing], what: str) -> None:
        """Publish and wait for RabbitMQ's confirms, sending again what a break left unconfirmed.

        A batch with a message whose headers cannot fit in one frame is refused whole, before
        anything is sent (``MessageRefused``). When the server closes the connection over what was
        sent anyway, the rest go one at a time, and the one it refuses alone is never sent again:
        the others are published, then ``MessageRefused`` is raised."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        pending = messages
        alone = False  # after a refusal of a batch: one at a time, to find the message refused
        refused: list[BaseException] = []
        while pending:
            channel = await self.channel(max(deadline - loop.time(), 0.001))
            check_frames(pending, _frame_max(channel), what)
            batch = pending[:1] if alone else pending
            failed: list[Outgoing] = []
            for out, result in zip(batch, await self._results(channel, batch), strict=True):
                if isinstance(result, BaseException):
                    reason = refusal(result, channel)
                    if reason is not None and len(batch) == 1:
                        refused.append(reason)  # settled: never sent again
                        self.link.log.warning('%s: RabbitMQ closed the connection over a message to %s (%s); '
                                              'not sending it again', self.link.name, what, reason)
                        continue
                    alone = alone or reason is not None
                    if reason is None and not _interrupted(result, channel):
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
            pending = failed + pending[len(batch):]
        if refused:
            which = (f'{len(refused)} of {len(messages)} messages (the others were sent)' if len(messages) > 1
                     else 'the message')
            raise MessageRefused(f'{what}: RabbitMQ closed the connection over {which}; not sent again '
                                 f'({type(refused[0]).__name__}: {refused[0]})')

    async def _results(self, channel: AbstractChannel, batch: list[Outgoing]) -> list[Any]:
        if len(batch) == 1:
            try:
                return [await self._one(channel, batch[0])]
            except Exception as exc:
                return [exc]
        return await asyncio.gather(*(self._one(channel, out) for out in batch), return_exceptions=True)

    @staticmethod
    async def _one(channel: AbstractChannel, out: Outgoing) -> Any:
        return await channel.basic_publish(out.body, exchange=out.exchange, routing_key=out.routing_key,
                                           mandatory=out.mandatory,
                                           properties=out.properties)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await channel.close()
