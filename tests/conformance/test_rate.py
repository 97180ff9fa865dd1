"""Rate limits on every backend: ``async with self.limit(...)`` around a call, a consumer with
``rate=`` handles no faster than its rate, and one over its limit stops fetching (holds nothing).

Bounds cannot flake on a slow machine: for handling times t_i (sorted), every pair i < j has
``j - i + 1 <= burst + (t_j - t_i) * rate + 1 + held``, ``held`` being what the consumer may have
taken before t_i and handle after it (its concurrency + prefetch): slowness only helps.
"""
from __future__ import annotations

import asyncio

import msgspec

from microagent import MicroAgent, Queue, Rate, consumer
from tests.conformance.backends import Backend
from tests.helpers import eventually


class Job(msgspec.Struct, frozen=True):
    number: int


def check_bound(times: list[float], rate: Rate, held: int) -> None:
    times = sorted(times)
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            assert j - i + 1 <= rate.burst + (times[j] - times[i]) * rate.per_second + 1 + held, (i, j, times)


async def test_limit_around_a_call(backend: Backend, unique: str) -> None:
    rate = Rate(40, burst=4)
    loop = asyncio.get_running_loop()
    times: list[float] = []
    async with MicroAgent(broker=backend.broker()) as agent:
        start = loop.time()
        for _ in range(16):
            async with agent.limit(f'smtp_{unique}', rate):
                times.append(loop.time())
    check_bound([start, *times], rate, held=0)
    assert times[-1] - start >= (16 - 4) / 40 - 0.01  # it did wait


async def test_a_limited_consumer_handles_no_faster_than_its_rate(backend: Backend, unique: str) -> None:
    queue = Queue(f'rate_{unique}', Job)
    rate = Rate(40, burst=5)
    loop = asyncio.get_running_loop()
    times: list[float] = []

    class Worker(MicroAgent):
        @consumer(queue, rate=rate, concurrency=1, prefetch=0)
        async def work(self, job: Job) -> None:
            times.append(loop.time())

    broker = backend.broker()
    await broker[queue].send_many([Job(n) for n in range(30)])
    async with Worker(broker=broker):
        await eventually(lambda: _true(len(times) == 30), timeout=20)
    check_bound(times, rate, held=1)
    assert times[-1] - times[0] >= (30 - 5 - 2) / 40


async def test_a_consumer_over_its_limit_holds_no_messages(backend: Backend, unique: str) -> None:
    queue = Queue(f'rate_hold_{unique}', Job)
    handled: list[int] = []
    loop = asyncio.get_running_loop()

    class Worker(MicroAgent):
        @consumer(queue, rate='2/s', concurrency=2, prefetch=50)
        async def work(self, job: Job) -> None:
            handled.append(job.number)

    broker = backend.broker()
    await broker[queue].send_many([Job(n) for n in range(100)])
    start = loop.time()  # no grant before it
    async with Worker(broker=broker):
        await eventually(lambda: _true(len(handled) >= 2), timeout=10)
        await asyncio.sleep(0.5)
        depth = await broker[queue].depth()
        # without a limit it would hold 52 (concurrency + prefetch); with one, what it was granted
        # and has not acknowledged yet (RabbitMQ pushes up to `concurrency` to a consumer's channel)
        assert depth.in_flight <= 4, depth
        assert depth.ready >= 100 - len(handled) - 4, depth
        assert len(handled) <= 2 + (loop.time() - start) * 2, handled


async def _true(value: bool) -> bool:
    return value


async def test_a_batch_consumer_rate_counts_messages(backend: Backend, unique: str) -> None:
    queue = Queue(f'rate_batch_{unique}', Job)
    rate = Rate(40, burst=5)
    loop = asyncio.get_running_loop()
    times: list[float] = []

    class Worker(MicroAgent):
        @consumer(queue, batch=10, batch_wait=0.05, rate=rate, prefetch=10)
        async def work(self, jobs: list[Job]) -> None:
            times.extend(loop.time() for _ in jobs)

    broker = backend.broker()
    await broker[queue].send_many([Job(n) for n in range(30)])
    async with Worker(broker=broker):
        await eventually(lambda: _true(len(times) == 30), timeout=20)
    check_bound(times, rate, held=11)  # a batch of up to 10 in hand, and what the fetch loop took
    assert times[-1] - times[0] >= (30 - 5 - 12) / 40  # counting batches, 3 of them, would take no time
