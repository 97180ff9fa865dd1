"""Rate limits: ``@consumer(q, rate='100/s')`` and ``async with self.limit('smtp', '10/s'):``.

A ``Rate`` is ``count`` per ``period`` seconds with a ``burst`` (``count`` rounded up, at least 1,
unless given): at most ``burst + elapsed * count / period`` are granted over any ``elapsed`` time.
It is the GCRA (generic cell rate algorithm): one number per limit, the theoretical arrival time
``tat``; taking ``n`` moves it ``n`` intervals on from ``max(tat, now)``, allowed while it stays
within ``burst`` intervals of now.

A broker transport may share its limits across processes: it then has a method ``limiter()``
returning a ``Limiter`` (Redis: one Lua script on the server clock). The engine falls back to a
``LocalLimiter`` (this process, this broker) when it has none.
"""
from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from types import TracebackType
from typing import Protocol

from microagent.errors import DeclarationError, InvalidArgument

__all__ = ['Limit', 'Limiter', 'LocalLimiter', 'Rate', 'limiter_of']

PERIODS = {'s': 1.0, 'm': 60.0, 'h': 3600.0}
_RATE = re.compile(r'(?P<count>[0-9]+(?:\.[0-9]+)?)/(?P<unit>[smh])')
#: a float's slack when counting whole tokens: ``2.9999999999`` intervals are 3
_EPSILON = 1e-9
#: the most a ``Rate`` grants per second, and the fewest: keeps the arithmetic exact enough
MAX_PER_SECOND = 1e9
MIN_PER_SECOND = 1e-6


@dataclass(frozen=True)
class Rate:
    """``count`` grants per ``period`` seconds, up to ``burst`` at once (0, the default: ``count``
    rounded up, at least 1; ``burst=1`` spaces grants evenly)."""

    count: float
    period: float = 1.0
    burst: int = field(default=0)

    def __post_init__(self) -> None:
        for name, value in (('count', self.count), ('period', self.period)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise InvalidArgument(f'a rate {name} must be a finite number > 0, got {value!r}')
        if not MIN_PER_SECOND <= self.count / self.period <= MAX_PER_SECOND:
            raise InvalidArgument(f'a rate must be between {MIN_PER_SECOND} and {MAX_PER_SECOND:g} per second, '
                                  f'got {self.count}/{self.period}s')
        if self.burst == 0:
            object.__setattr__(self, 'burst', max(1, math.ceil(self.count)))
        elif isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise InvalidArgument(f'a rate burst must be an integer >= 1, got {self.burst!r}')

    @property
    def interval(self) -> float:
        """Seconds between two grants at the steady rate."""
        return self.period / self.count

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        unit = {1.0: 's', 60.0: 'm', 3600.0: 'h'}.get(self.period)
        text = f'{_number(self.count)}/{unit}' if unit else f'{_number(self.count)}/{_number(self.period)}s'
        return text if self.burst == max(1, math.ceil(self.count)) else f'{text} (burst {self.burst})'

    @staticmethod
    def parse(text: str | Rate) -> Rate:
        """``'100/s'``, ``'6/m'``, ``'1000/h'``, ``'0.5/s'``: a count (digits, a decimal point) per
        second, minute or hour, nothing else (no spaces, signs or exponents). A ``Rate`` is kept."""
        if isinstance(text, Rate):
            return text
        if not isinstance(text, str):
            raise InvalidArgument(f"a rate is a string such as '100/s', '6/m' or '1000/h', got {text!r}")
        return _parse(text)


def _number(value: float) -> str:
    """A count as the rate grammar writes it: digits, a decimal point, no exponent."""
    return str(int(value)) if float(value).is_integer() else format(Decimal(repr(float(value))), 'f')


@lru_cache(maxsize=256)
def _parse(text: str) -> Rate:
    match = _RATE.fullmatch(text)
    if match is None:
        raise InvalidArgument(f"a rate is a count per second, minute or hour such as '100/s', '6/m', '1000/h' "
                         f'or \'0.5/s\', got {text!r}')
    return Rate(float(match['count']), PERIODS[match['unit']])


def check_rate(where: str, value: object) -> Rate:
    """A consumer's ``rate`` option, checked when the class is defined."""
    try:
        return Rate.parse(value)  # type: ignore[arg-type]  # checked inside
    except ValueError as exc:
        raise DeclarationError(f'{where}: {exc}') from None


def gcra(tat: float, now: float, rate: Rate, want: int) -> tuple[int, float, float]:
    """One take: ``(granted, seconds to wait when none, the new tat)``. Times in seconds."""
    interval = rate.interval
    base = tat if tat > now else now
    room = int((now + rate.burst * interval - base) / interval + _EPSILON)
    granted = min(want, room) if room > 0 else 0
    if granted:
        return granted, 0.0, base + granted * interval
    return 0, max(base + interval - rate.burst * interval - now, 0.0), tat


class Limiter(Protocol):
    """Grants of named limits; a transport's ``limiter()`` returns one shared through its server."""

    async def take(self, key: str, rate: Rate, want: int) -> tuple[int, float]:
        """Take up to ``want`` grants of limit ``key`` now: ``(granted, seconds until one is free
        when none was granted)``. Raises when the server cannot be reached."""
        ...

    async def give_back(self, key: str, rate: Rate, count: int) -> None:
        """Return ``count`` grants taken and not used (a fetch brought fewer messages)."""
        ...


class LocalLimiter:
    """The GCRA in this process, on its monotonic clock: for backends without a shared one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tat: dict[str, float] = {}

    async def take(self, key: str, rate: Rate, want: int) -> tuple[int, float]:
        return self.take_now(key, rate, want)

    def take_now(self, key: str, rate: Rate, want: int) -> tuple[int, float]:
        now = self.clock()
        granted, wait, self._tat[key] = gcra(self._tat.get(key, now), now, rate, want)
        return granted, wait

    async def give_back(self, key: str, rate: Rate, count: int) -> None:
        self.give_back_now(key, rate, count)

    def give_back_now(self, key: str, rate: Rate, count: int) -> None:
        if key in self._tat:
            self._tat[key] -= count * rate.interval


def limiter_of(transport: object) -> Limiter:
    """The transport's shared limiter (its ``limiter()``), else a new ``LocalLimiter``."""
    make = getattr(transport, 'limiter', None)
    return make() if callable(make) else LocalLimiter()


#: the longest single sleep of a wait, so a stop or a freed limit is noticed
MAX_SLEEP = 1.0


async def acquire(limiter: Limiter, key: str, rate: Rate, count: int = 1) -> None:
    """Wait until ``count`` grants of ``key`` are taken (fewer at a time when the burst is smaller)."""
    left = count
    while left > 0:
        granted, wait = await limiter.take(key, rate, left)
        left -= granted
        if left > 0 and not granted:
            await asyncio.sleep(min(wait, MAX_SLEEP) if wait > 0 else 0)


class Limit:
    """``async with agent.limit('smtp', '10/s'):``: the body runs once a grant of the named limit
    is taken (waiting for it); leaving the block gives nothing back (a rate, not a semaphore)."""

    __slots__ = ('count', 'key', 'limiter', 'rate')

    def __init__(self, limiter: Limiter, name: str, rate: str | Rate, count: int = 1) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f'a limit needs a name, got {name!r}')
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidArgument(f'a limit takes a count >= 1, got {count!r}')
        self.limiter = limiter
        self.key = f'limit:{name}'
        self.rate = Rate.parse(rate)
        self.count = count

    async def __aenter__(self) -> None:
        await acquire(self.limiter, self.key, self.rate, self.count)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        return None


def queue_key(name: str) -> str:
    """The limit a ``@consumer(q, rate=...)`` takes from: one per queue, for every consumer of it."""
    return f'queue:{name}'
