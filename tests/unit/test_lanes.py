"""A receiver's idle worker waits a while for the next signal (``lanes.py``): signals arriving one at
a time reuse it instead of a task each, idle workers end on their own, and stopping one agent never
waits for another agent's idle workers."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
import pytest

from microagent import MicroAgent, Signal, receiver
from microagent import lanes as lanes_module
from microagent.backends.memory import MemorySignalBus


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - polls the bus's state, nothing to await
            await asyncio.sleep(0.01)


class Tick(msgspec.Struct, frozen=True):
    n: int


TICK = Signal('lanes_tick', Tick)


class Ticks(MicroAgent):
    workers: list[asyncio.Task[object] | None]

    @receiver(TICK, concurrency=2)
    async def on_tick(self, tick: Tick) -> None:
        self.workers.append(asyncio.current_task())


async def test_signals_one_at_a_time_reuse_the_idle_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes_module, 'IDLE', 10.0)
    bus = MemorySignalBus()
    agent = Ticks(bus=bus)
    agent.workers = []
    await agent._start()
    try:
        for n in range(5):
            await bus[TICK].send('test', Tick(n))
            await eventually(lambda: len(agent.workers) == n + 1)  # noqa: B023 - awaited in the loop
        assert len(set(agent.workers)) == 1
    finally:
        started = time.monotonic()
        await agent.stop()
        assert time.monotonic() - started < 5  # its idle worker ends at once, not after IDLE
        await bus.close()
    assert not bus._tasks


async def test_an_idle_worker_ends_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes_module, 'IDLE', 0.05)
    bus = MemorySignalBus()
    agent = Ticks(bus=bus)
    agent.workers = []
    await agent._start()
    try:
        await bus[TICK].send('test', Tick(1))
        await eventually(lambda: len(agent.workers) == 1)
        await eventually(lambda: not bus._tasks)  # no task and no timer kept for an idle receiver
        lane = next(iter(bus._lanes.values()))
        assert lane.workers == 0 and lane._timer is None and not lane._idle
        await bus[TICK].send('test', Tick(2))  # a new worker for the next signal
        await eventually(lambda: len(agent.workers) == 2)
        assert agent.workers[0] is not agent.workers[1]
    finally:
        await agent.stop()
        await bus.close()


async def test_stopping_an_agent_does_not_wait_for_the_idle_workers_of_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes_module, 'IDLE', 30.0)
    bus = MemorySignalBus()
    first, second = Ticks(bus=bus), Ticks(bus=bus)
    first.workers, second.workers = [], []
    await first._start()
    await second._start()
    try:
        await bus[TICK].send('test', Tick(1))
        await eventually(lambda: len(first.workers) == len(second.workers) == 1)
        started = time.monotonic()
        await first.stop()
        assert time.monotonic() - started < 5
        await bus[TICK].send('test', Tick(2))  # the other one still receives, on its idle worker
        await eventually(lambda: len(second.workers) == 2)
        assert second.workers[0] is second.workers[1] and len(first.workers) == 1
    finally:
        await second.stop()
        await bus.close()


async def test_a_burst_still_runs_at_most_concurrency_calls() -> None:
    running, most, done = 0, 0, asyncio.Event()
    release = asyncio.Event()
    handled: list[int] = []

    class Slow(MicroAgent):
        @receiver(TICK, concurrency=3)
        async def on_tick(self, tick: Tick) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await release.wait()
            running -= 1
            handled.append(tick.n)
            if len(handled) == 10:
                done.set()

    bus = MemorySignalBus()
    agent = Slow(bus=bus)
    await agent._start()
    try:
        for n in range(10):
            await bus[TICK].send('test', Tick(n))
        await eventually(lambda: running == 3)
        release.set()
        await asyncio.wait_for(done.wait(), 5)
        assert most == 3 and sorted(handled) == list(range(10))
        lane = next(iter(bus._lanes.values()))
        assert lane.workers <= 3
    finally:
        await agent.stop()
        await bus.close()
