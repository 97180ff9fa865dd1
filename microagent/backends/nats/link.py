"""One nats-py connection, opened on first use and kept by the client's own reconnection, with log
lines that never show the DSN's credentials; and the names this backend gives things on the server.

nats-py reconnects by itself (forever here) and sends the subscriptions again on each new
connection; JetStream consumers are durable on the server, so a pull consumer just fetches again.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from functools import partial

from nats.aio.client import Client
from nats.js import JetStreamContext

from microagent.dsn import hide_password, scrub
from microagent.errors import ConnectionFailed, UsageError

__all__ = ['Link', 'subject_token']

#: how long a JetStream API call or publish acknowledgement may take before it is an error
API_TIMEOUT = 10.0


def subject_token(name: str) -> str:
    """A queue name as one subject token and stream-name part: ``[A-Za-z0-9_]`` only, injective
    (``_`` doubled, ``.`` and ``-`` escaped), so ``-`` can separate a stream name's parts."""
    return name.replace('_', '__').replace('.', '_D').replace('-', '_H')


def check_subject(subject: str, what: str) -> str:
    """``subject`` if NATS takes it as a literal subject; else a UsageError naming ``what``."""
    tokens = subject.split('.')
    if any(not token or token in ('*', '>') or any(c in token for c in ' \t\r\n*>') for token in tokens):
        raise UsageError(f'{what}: {subject!r} is not a valid NATS subject (empty word, space or wildcard)')
    return subject


class Link:
    """The connection of one transport: ``client()`` connects on first use and after a close."""

    def __init__(self, dsn: str, log: logging.Logger, name: str, *, connect_timeout: float = 5.0,
                 reconnect_wait: float = 0.5) -> None:
        self.dsn = dsn
        self.safe_dsn = hide_password(dsn)
        self.log = log
        self.name = name
        self.connect_timeout = connect_timeout
        self.reconnect_wait = reconnect_wait
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()
        self._failures = 0  # errors since the connection was last up
        self._last_error = ''
        self._closing = False
        #: counts the clients made: what was subscribed or bound on an older one is gone with it
        self.generation = 0
        self._on_lost: list[Callable[[str], None]] = []
        self._reconnected_callbacks: list[Callable[[], None]] = []

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(why)`` when the server closes the client (a protocol error such as a
        message over ``max_payload`` makes nats-py close it for good; the next ``client()`` opens a
        new one), so what waits for an answer on the old client fails now, not after a timeout."""
        self._on_lost.append(callback)

    def on_reconnected(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time the client reconnects (what the server learnt meanwhile may
        have changed)."""
        self._reconnected_callbacks.append(callback)

    def scrub(self, error: BaseException | str) -> str:
        return scrub(str(error), self.dsn)

    async def client(self) -> Client:
        client = self._client
        if client is not None and not client.is_closed:
            return client
        async with self._lock:
            if self._client is None or self._client.is_closed:
                self._client = await self._connect()
                self._js = None
                self.generation += 1
            return self._client

    async def jetstream(self) -> JetStreamContext:
        client = await self.client()
        if self._js is None:
            self._js = client.jetstream(timeout=API_TIMEOUT)
        return self._js

    async def _connect(self) -> Client:
        """Connect within ``connect_timeout`` (nats-py would retry a first connection forever, as it
        reconnects); once connected, the client reconnects by itself for as long as it takes."""
        client = Client()
        self._failures = 0
        try:
            async with asyncio.timeout(self.connect_timeout):
                await client.connect(
                    self.dsn, name=self.name, connect_timeout=max(math.ceil(self.connect_timeout), 1),
                    allow_reconnect=True, max_reconnect_attempts=-1,
                    # nats-py annotates int, but sleeps this many seconds: a fraction works
                    reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]
                    error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected, closed_cb=partial(self._on_closed, client))
        except Exception as exc:
            with contextlib.suppress(Exception):
                await client.close()
            why = f'{type(exc).__name__}: {self.scrub(exc)}' if str(exc) else type(exc).__name__
            raise ConnectionFailed(f'{self.name}: cannot connect to NATS at {self.safe_dsn}: {why}'
                                   f'{self._last_error}') from None
        return client

    async def _on_error(self, exc: Exception) -> None:
        """The first error of an outage is a warning; the client's retries after it are debug lines."""
        self._failures += 1
        self._last_error = f' ({type(exc).__name__}: {self.scrub(exc)})'
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        self.log.log(level, '%s: NATS error: %s: %s', self.name, type(exc).__name__, self.scrub(exc))

    async def _on_disconnected(self) -> None:
        if self._closing:
            return  # our own close
        self.log.warning('%s: disconnected from NATS at %s; reconnecting', self.name, self.safe_dsn)

    async def _on_closed(self, client: Client) -> None:
        if self._closing or client is not self._client:
            return  # our own close, or an old client's
        error = client.last_error
        why = f'{type(error).__name__}: {self.scrub(error)}' if error else 'closed'
        self.log.warning('%s: NATS closed the connection (%s); the next use opens a new one', self.name, why)
        for callback in self._on_lost:
            callback(why)

    async def _on_reconnected(self) -> None:
        self._failures = 0
        self.log.info('%s: reconnected to NATS at %s', self.name, self.safe_dsn)
        for callback in self._reconnected_callbacks:
            callback()

    async def ping(self, timeout: float = 5.0) -> None:
        """One round trip to the server; raises when it does not answer in ``timeout`` seconds."""
        client = await self.client()
        if not client.is_connected:
            raise ConnectionFailed(f'{self.name}: not connected to NATS at {self.safe_dsn}')
        try:
            await client.flush(max(math.ceil(timeout), 1))  # nats-py takes whole seconds
        except Exception as exc:
            raise ConnectionFailed(f'{self.name}: NATS at {self.safe_dsn} did not answer: '
                                   f'{type(exc).__name__}: {self.scrub(exc)}') from None

    async def close(self) -> None:
        client, self._client, self._js = self._client, None, None
        if client is not None and not client.is_closed:
            self._closing = True
            try:
                await client.close()
            finally:
                self._closing = False
