"""Cron and a wall clock that jumps: driven by a fake clock, no real waiting."""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import pairwise

import pytest

from microagent.timer import Timer, run_cron

START = datetime(2026, 3, 1, 10, 0, 30, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


class Stop(Exception):
    """Ends the schedule when the fake clock reaches the end of the test."""


class FakeClock:
    """A wall clock and a monotonic clock that advance together on ``sleep``; ``jumps`` moves the
    wall clock alone by some delta once the monotonic clock passes a given time."""

    def __init__(self, start: datetime, end: float, jumps: dict[float, timedelta] | None = None) -> None:
        self.wall, self.mono, self.end = start, 0.0, end
        self.jumps = dict(jumps or {})
        self.sleeps: list[float] = []

    def now(self, zone: tzinfo) -> datetime:
        return self.wall.astimezone(zone)

    def monotonic(self) -> float:
        return self.mono

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)
        for at in [at for at in self.jumps if at <= self.mono]:
            self.wall += self.jumps.pop(at)
        if self.mono >= self.end:
            raise Stop


class Recorder(Timer):
    """Records when each run would start (by both clocks) instead of running anything."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__('job', self._nothing, 1.0, logging.getLogger('test.cron'))
        self.clock = clock
        self.runs: list[tuple[datetime, float]] = []

    async def _nothing(self) -> None:
        return None

    def fire(self) -> None:
        self.runs.append((self.clock.wall, self.clock.mono))


async def schedule(spec: str, clock: FakeClock) -> Recorder:
    timer = Recorder(clock)
    with pytest.raises(Stop):
        await run_cron(timer, spec, None, now=clock.now, monotonic=clock.monotonic, sleep=clock.sleep)
    return timer


async def test_cron_fires_at_each_slot_and_sleeps_in_bounded_chunks() -> None:
    clock = FakeClock(START, end=5 * 60)

    timer = await schedule('* * * * *', clock)

    assert [wall for wall, _ in timer.runs] == [START + timedelta(seconds=30) + n * MINUTE for n in range(5)]
    assert max(clock.sleeps) <= 5.0


async def test_a_forward_jump_runs_the_missed_slot_once_then_follows_the_new_time() -> None:
    clock = FakeClock(START, end=3 * 60, jumps={10: timedelta(hours=1)})  # 10:00:40 becomes 11:00:40

    timer = await schedule('* * * * *', clock)

    walls = [wall for wall, _ in timer.runs]
    assert walls[0] == datetime(2026, 3, 1, 11, 0, 40, tzinfo=UTC)  # the missed 10:01 slot, once
    assert walls[1:] == [datetime(2026, 3, 1, 11, 1, tzinfo=UTC) + n * MINUTE for n in range(len(walls) - 1)]
    assert len(walls) == 4  # 11:00:40, 11:01, 11:02, 11:03: no burst of the hour it skipped


async def test_a_jump_during_a_long_sleep_is_noticed() -> None:
    clock = FakeClock(datetime(2026, 3, 1, 5, 0, tzinfo=UTC), end=3600, jumps={10: timedelta(hours=2)})

    timer = await schedule('0 6 * * *', clock)

    assert len(timer.runs) == 1
    _, mono = timer.runs[0]
    assert mono <= 10 + 5.0  # within one bounded sleep of the jump, not at the old 06:00


async def test_a_backward_jump_keeps_the_cadence_by_the_new_clock() -> None:
    clock = FakeClock(START, end=12 * 60, jumps={35: -timedelta(hours=1)})  # after the 10:01 run

    timer = await schedule('* * * * *', clock)

    walls = [wall for wall, _ in timer.runs]
    monos = [mono for _, mono in timer.runs]
    assert walls[0] == datetime(2026, 3, 1, 10, 1, tzinfo=UTC)
    assert walls[1:] == [datetime(2026, 3, 1, 9, 2, tzinfo=UTC) + n * MINUTE for n in range(len(walls) - 1)]
    assert len(walls) == 12  # not silent for an hour
    assert all(later - earlier == 60 for earlier, later in pairwise(monos))  # no burst


async def test_a_small_backward_jump_does_not_repeat_the_last_run() -> None:
    clock = FakeClock(START, end=4 * 60 + 1, jumps={35: -timedelta(seconds=30)})  # 10:01:05 becomes 10:00:35

    timer = await schedule('* * * * *', clock)

    walls = [wall for wall, _ in timer.runs]
    assert walls == [datetime(2026, 3, 1, 10, minute, tzinfo=UTC) for minute in (1, 2, 3, 4)]


async def test_a_backward_jump_does_not_repeat_a_daily_run() -> None:
    clock = FakeClock(datetime(2026, 3, 1, 5, 59, tzinfo=UTC), end=6 * 3600,
                      jumps={1800: -timedelta(hours=1)})  # 06:29 becomes 05:29

    timer = await schedule('0 6 * * *', clock)

    assert [wall for wall, _ in timer.runs] == [datetime(2026, 3, 1, 6, 0, tzinfo=UTC)]
