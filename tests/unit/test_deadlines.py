"""A receiver's calls share one timer (``deadlines.py``) yet each ends at its own deadline, exactly
as ``asyncio.timeout`` would end it, and an idle receiver keeps no timer."""
from __future__ import annotations

import asyncio

import msgspec
import pytest

from microagent import CallTimeout, Signal
from microagent.backends.memory import MemorySignalBus
from microagent.deadlines import Deadlines, _with_timer


class Ask(msgspec.Struct, frozen=True):
    n: int


ASK = Signal('deadlines_unanswered', Ask, returns=int)


async def test_a_call_over_its_timeout_is_cancelled_and_times_out() -> None:
    deadlines = Deadlines(0.05)
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await deadlines.run(slow())
    assert cancelled.is_set() and 0.05 <= loop.time() - started < 1
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the timeout's cancellation is taken back
    assert await deadlines.run(asyncio.sleep(0, 'next')) == 'next'


async def test_calls_under_way_end_at_their_own_deadlines_with_one_timer() -> None:
    deadlines = Deadlines(0.1)
    loop = asyncio.get_running_loop()
    ended: dict[int, float] = {}

    async def call(n: int, seconds: float) -> str:
        started = loop.time()
        try:
            await deadlines.run(asyncio.sleep(seconds))
            return 'done'
        except TimeoutError:
            ended[n] = loop.time() - started
            return 'timed out'

    first = asyncio.create_task(call(1, 10))
    await asyncio.sleep(0.04)
    second = asyncio.create_task(call(2, 10))
    quick = asyncio.create_task(call(3, 0.01))
    assert await quick == 'done'
    assert await first == 'timed out' and await second == 'timed out'
    assert 0.1 <= ended[1] < 0.5 and 0.1 <= ended[2] < 0.5  # the second was not cut short by the first
    await asyncio.sleep(0.15)
    assert deadlines._timer is None and not deadlines._calls  # nothing under way: no timer left


async def test_a_call_that_returns_in_time_is_never_cancelled_and_others_are_not_touched() -> None:
    deadlines = Deadlines(0.05)
    for _ in range(20):  # calls ending before the deadline leave the shared timer for the next ones
        assert await deadlines.run(asyncio.sleep(0.005, 'ok')) == 'ok'
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_an_outer_cancellation_stays_a_cancellation() -> None:
    deadlines = Deadlines(10)
    task = asyncio.create_task(deadlines.run(asyncio.sleep(10)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_call_within_a_call_of_the_same_receiver_has_a_timer_of_its_own() -> None:
    deadlines = Deadlines(0.05)

    async def outer() -> str:
        inner = await deadlines.run(asyncio.sleep(0, 'inner'))
        assert asyncio.current_task() in deadlines._calls  # the outer call's deadline still holds
        return f'{inner}, then outer'

    assert await deadlines.run(outer()) == 'inner, then outer'
    with pytest.raises(TimeoutError):
        await _with_timer(asyncio.sleep(10), 0.01)


async def test_rpc_calls_of_one_bus_share_a_timer_and_each_times_out_at_its_own_deadline() -> None:
    bus = MemorySignalBus()
    loop = asyncio.get_running_loop()

    async def call(timeout: float) -> float:
        started = loop.time()
        with pytest.raises(CallTimeout):
            await bus[ASK].call('test', Ask(1), timeout=timeout)
        return loop.time() - started

    slow = asyncio.create_task(call(0.4))
    await asyncio.sleep(0.01)
    quick = await call(0.05)  # a nearer deadline than the armed one: the timer moves to it
    assert 0.05 <= quick < 0.3
    assert 0.4 <= await slow < 1.5
    async with bus[ASK].waiter('test', Ask(2), timeout=0.05) as answers:
        assert [answer async for answer in answers] == []
    assert not bus._expiry._waiting and bus._expiry._timer is None
    await bus.close()
