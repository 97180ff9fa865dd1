"""Periodic and cron scheduling: each run is bounded by its timeout, a failure never stops the
schedule, and a slow run does not delay the next one."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, tzinfo
from typing import Any

from croniter import croniter


class Timer:
    """Runs one scheduled handler until cancelled."""

    def __init__(self, name: str, func: Callable[[], Awaitable[Any]], timeout: float,
                 log: logging.Logger) -> None:
        self.name = name
        self.func = func
        self.timeout = timeout
        self.log = log
        self._runs: set[asyncio.Task[None]] = set()

    async def run_once(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.func()
        except TimeoutError:
            self.log.error('Task %s timed out after %.1fs', self.name, self.timeout)
        except Exception:
            self.log.exception('Task %s failed', self.name)

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


async def run_cron(timer: Timer, spec: str, tz: tzinfo | None) -> None:
    """Fire at every time the cron spec gives, computed in ``tz`` (UTC by default)."""
    zone = tz or UTC
    after = datetime.now(zone)
    while True:
        due = next_cron_time(spec, after)
        await asyncio.sleep(max(0.0, (due - datetime.now(zone)).total_seconds()))
        timer.fire()
        after = due
