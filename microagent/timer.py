"""Periodic and cron scheduling: each run is bounded by its timeout, a failure never stops the
schedule, and a slow run does not delay the next one."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal, Protocol

from croniter import croniter

from microagent.logs import FAILED, current_handler, set_handler
from microagent.middleware import Handling, MiddlewareLike, Outcome, Site, active, wrap

#: longest single sleep of a cron schedule, so that a jump of the wall clock is noticed soon
MAX_CRON_SLEEP = 5.0
#: wall-clock drift (seconds, per sleep) below which the clock is not considered moved
CLOCK_TOLERANCE = 1.0


class _Owner(Protocol):
    @property
    def middlewares(self) -> tuple[MiddlewareLike, ...]: ...


class Timer:
    """Runs one scheduled handler until cancelled."""

    def __init__(self, name: str, func: Callable[[], Awaitable[Any]], timeout: float,
                 log: logging.Logger, *, kind: Literal['periodic', 'cron'] = 'periodic',
                 agent: _Owner | None = None) -> None:
        self.name = name
        self.func = func
        self.timeout = timeout
        self.log = log
        self.kind: Literal['periodic', 'cron'] = kind
        self.agent = agent  # whose middlewares wrap each run
        self._runs: set[asyncio.Task[None]] = set()
        self._site: Site | None = None  # for middlewares, made on first use

    async def _run_bounded(self) -> None:
        async with asyncio.timeout(self.timeout):
            await self.func()

    async def _run_through(self, middlewares: tuple[MiddlewareLike, ...]) -> None:
        """A run behind the agent's middlewares; the timeout is inside, so they see it end."""
        if self._site is None:
            self._site = Site(self.kind, type(self.agent).__name__, self.name, self.name, '')
        handling = Handling(self._site)

        async def run() -> None:
            try:
                await self._run_bounded()
            except TimeoutError as exc:
                handling.failed(exc, Outcome.FAILED, timed_out=True)
                raise
            except Exception as exc:
                handling.failed(exc, Outcome.FAILED)
                raise

        await wrap(middlewares, 'handle', handling, run)()

    async def run_once(self) -> None:
        named = set_handler(self.agent, self.name) if self.agent is not None else None
        try:
            middlewares = active(self.agent.middlewares) if self.agent is not None else ()
            if middlewares:
                await self._run_through(middlewares)
            else:
                await self._run_bounded()
        except TimeoutError:
            self.log.error('Task %s timed out after %.1fs; it runs again when next due', self.name, self.timeout,
                           extra=FAILED)
        except Exception:
            self.log.exception('Task %s failed; it runs again when next due', self.name, extra=FAILED)
        finally:
            if named is not None:
                current_handler.reset(named)

    def fire(self) -> None:
        task = asyncio.create_task(self.run_once())
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def wait_runs(self, grace: float) -> None:
        if self._runs:
            await asyncio.wait(list(self._runs), timeout=grace)
        for task in list(self._runs):
            task.cancel()


async def run_periodic(timer: Timer, period: float, start_after: float) -> None:
    """Fire every ``period`` seconds on a fixed grid, first after ``start_after`` seconds."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(start_after)
    due = loop.time()
    while True:
        timer.fire()
        due += period
        now = loop.time()
        if due < now:  # runs were missed (the loop was blocked): skip them, keep the grid
            due += ((now - due) // period + 1) * period
        await asyncio.sleep(due - now)


def next_cron_time(spec: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that matches the cron spec."""
    result: datetime = croniter(spec, after).get_next(datetime)
    return result


async def run_cron(timer: Timer, spec: str, tz: tzinfo | None, *,
                   now: Callable[[tzinfo], datetime] = datetime.now,
                   monotonic: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                   max_sleep: float = MAX_CRON_SLEEP) -> None:
    """Fire at every time the cron spec gives, computed in ``tz`` (UTC by default).

    The wall clock may jump (NTP, a manual change): it is compared with the monotonic clock after
    each sleep, and sleeps last at most ``max_sleep`` seconds so a jump is noticed soon. As cron
    daemons do, a forward jump runs the missed slots once, then goes on with the first slot after
    the new time; a backward jump goes on by the new clock, the next run coming no sooner than one
    step of the schedule after the last run: no repeat in a burst, no hour of silence.
    ``now``, ``monotonic`` and ``sleep`` are parameters so that tests drive a fake clock.
    """
    zone = tz or UTC
    due = next_cron_time(spec, now(zone))
    last_run: tuple[datetime, float] | None = None  # (slot, monotonic time) of the last run
    while True:
        wall, mono = now(zone), monotonic()
        if due.timestamp() <= wall.timestamp():  # timestamps: aware arithmetic in one zone ignores DST
            timer.fire()
            last_run = (due, mono)
            due = next_cron_time(spec, wall)  # slots missed by a forward jump: run once, just now
            continue
        await sleep(min(due.timestamp() - wall.timestamp(), max_sleep))
        moved = (now(zone).timestamp() - wall.timestamp()) - (monotonic() - mono)
        if moved < -CLOCK_TOLERANCE:  # the wall clock went back: reschedule by the new clock
            due = _after_backward_jump(spec, now(zone), monotonic(), last_run)


def _after_backward_jump(spec: str, wall: datetime, mono: float,
                         last_run: tuple[datetime, float] | None) -> datetime:
    """The first slot after ``wall`` that is at least one schedule step after the last run."""
    if last_run is None:
        return next_cron_time(spec, wall)
    slot, ran_at = last_run
    step = next_cron_time(spec, slot).timestamp() - slot.timestamp()
    wait = max(0.0, ran_at + step - mono)
    return next_cron_time(spec, datetime.fromtimestamp(wall.timestamp() + wait - 1e-6, wall.tzinfo))
