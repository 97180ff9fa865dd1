"""Backoff between attempts, written once for the engines and every transport.

A loop that talks to a server (a subscriber's reader, a consumer's fetch loop, a heartbeat, a
reconnection) must neither hammer a server that is down nor sleep long after it is back. ``backoff``
gives the delay before an attempt; ``Retrier`` keeps the count of one loop's consecutive failures,
logs each one with the delay it waits, and logs once when the loop works again.
"""
from __future__ import annotations

import asyncio
import logging

__all__ = ['Retrier', 'backoff']


def backoff(attempt: int, base: float, cap: float = 60.0) -> float:
    """Delay before the retry that follows failure ``attempt`` (from 1): base, 2 x base, 4 x base ... cap."""
    return float(min(base * 2 ** (attempt - 1), cap))


class Retrier:
    """The backoff state of one loop: ``await retrier.failed(exc)`` after a failed attempt (logs and
    sleeps), ``retrier.succeeded()`` after a good one. The cap is short by default (2 s): after an
    outage the loop is back within about two seconds of the server."""

    __slots__ = ('base', 'cap', 'failures', 'log', 'what')

    def __init__(self, log: logging.Logger, what: str, base: float = 0.1, cap: float = 2.0) -> None:
        self.log = log
        self.what = what  # e.g. "Fetching from queue mailer"
        self.base = base
        self.cap = cap
        self.failures = 0

    async def failed(self, exc: BaseException) -> None:
        self.failures += 1
        delay = backoff(self.failures, self.base, self.cap)
        self.log.warning('%s failed (%s: %s); retry %d in %.1fs', self.what, type(exc).__name__, exc,
                         self.failures, delay)
        await asyncio.sleep(delay)

    def succeeded(self) -> None:
        if self.failures:
            self.log.info('%s works again', self.what)
            self.failures = 0
