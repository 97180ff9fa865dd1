"""Redis rate limits: one GCRA script on the server clock, shared by every broker (every process)
of a fleet; a script error is the fetch loop's usual failure and backoff, never a dead task."""
from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from collections.abc import AsyncIterator

import msgspec
import pytest
from redis.asyncio import Redis

from microagent import MicroAgent, Queue, Rate, consumer
from microagent.backends.redis import RedisBroker
from microagent.backends.redis.ratelimit import RedisLimiter, rate_key
from microagent.ratelimit import queue_key
from tests.conformance.backends import drop_queues
from tests.conformance.test_rate import check_bound
from tests.helpers import eventually

pytestmark = pytest.mark.redis

DSN = 'redis://127.0.0.1:6379/12'


class Job(msgspec.Struct, frozen=True):
    number: int


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(DSN)
    yield client
    await client.aclose()


@pytest.fixture
async def brokers(redis: Redis, unique: str) -> AsyncIterator[list[RedisBroker]]:
    opened: list[RedisBroker] = []
    yield opened
    for broker in opened:
        await broker.close()
    await drop_queues(redis, [f'rate_{unique}'], cluster=False)
    async for key in redis.scan_iter(match=f'microagent:rate:*{unique}*'):
        await redis.delete(key)


async def _true(value: bool) -> bool:
    return value


async def test_the_rate_holds_across_two_consumers_on_two_brokers(brokers: list[RedisBroker], unique: str) -> None:
    queue = Queue(f'rate_{unique}', Job)
    rate = Rate(40, burst=5)
    loop = asyncio.get_running_loop()
    times: list[float] = []

    class Worker(MicroAgent):
        @consumer(queue, rate=rate, concurrency=1, prefetch=0)
        async def work(self, job: Job) -> None:
            times.append(loop.time())

    brokers += [RedisBroker(DSN), RedisBroker(DSN)]
    await brokers[0][queue].send_many([Job(n) for n in range(60)])
    async with Worker(broker=brokers[0]), Worker(broker=brokers[1]):
        await eventually(lambda: _true(len(times) == 60), timeout=30)
    check_bound(times, rate, held=2)  # one message in hand per consumer
    # two limits of one process each would drain in about 55 / 80 s
    assert times[-1] - times[0] >= (60 - 5 - 3) / 40


_WORKER = textwrap.dedent('''
    import asyncio, sys, time
    import msgspec
    from redis.asyncio import Redis
    from microagent import MicroAgent, Queue, Rate, consumer
    from microagent.backends.redis import RedisBroker

    class Job(msgspec.Struct, frozen=True):
        number: int

    dsn, name = sys.argv[1], sys.argv[2]
    queue = Queue(name, Job)

    async def main() -> None:
        marks = Redis.from_url(dsn)

        class Worker(MicroAgent):
            @consumer(queue, rate=Rate(40, burst=5), concurrency=1, prefetch=0)
            async def work(self, job: Job) -> None:
                await marks.rpush(name + ':test:times', repr(time.time()))

        async with Worker(broker=RedisBroker(dsn)):
            await asyncio.Event().wait()

    asyncio.run(main())
''')


async def test_the_rate_holds_across_two_processes(redis: Redis, brokers: list[RedisBroker], unique: str) -> None:
    """Two processes, each its own clock and broker: their handling times, on this machine's wall
    clock, keep within the one rate."""
    name = f'rate_{unique}'
    brokers.append(RedisBroker(DSN))
    await brokers[0][Queue(name, Job)].send_many([Job(n) for n in range(60)])
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)}
    children = [await asyncio.create_subprocess_exec(sys.executable, '-c', _WORKER, DSN, name, env=env)
                for _ in range(2)]
    try:
        await eventually(lambda: _count(redis, f'{name}:test:times', 60), timeout=60)
    finally:
        for child in children:
            child.kill()
            await child.wait()
    times = [float(t) for t in await redis.lrange(f'{name}:test:times', 0, -1)]
    check_bound(times, Rate(40, burst=5), held=2)
    assert max(times) - min(times) >= (60 - 5 - 3) / 40


async def _count(redis: Redis, key: str, at_least: int) -> bool:
    return int(await redis.llen(key)) >= at_least


async def test_a_limit_is_one_key_on_the_server_clock_gone_at_rest(redis: Redis, unique: str) -> None:
    limiter = RedisLimiter(redis)
    rate = Rate(2, burst=2)  # a grant every 0.5 s: slow enough for a loaded machine
    key = f'limit:{unique}'
    assert await limiter.take(key, rate, 5) == (2, 0.0)
    granted, wait = await limiter.take(key, rate, 1)
    assert granted == 0 and 0 < wait <= 0.5
    assert 0 < await redis.pttl(rate_key(key)) <= 1001  # the key lives while the limit is in use
    await limiter.give_back(key, rate, 2)  # unused: the limit is at rest again
    assert not await redis.exists(rate_key(key))
    assert (await limiter.take(key, rate, 5))[0] == 2
    short = f'limit:short{unique}'
    assert await limiter.take(short, Rate(50, burst=1), 1) == (1, 0.0)
    await asyncio.sleep(0.1)
    assert not await redis.exists(rate_key(short))  # a limit at rest leaves nothing behind
    await redis.delete(rate_key(key))


async def test_a_script_error_is_a_fetch_failure_then_the_consumer_goes_on(
        brokers: list[RedisBroker], redis: Redis, unique: str) -> None:
    queue = Queue(f'rate_{unique}', Job)
    handled: list[int] = []

    class Worker(MicroAgent):
        @consumer(queue, rate='100/s')
        async def work(self, job: Job) -> None:
            handled.append(job.number)

    broken = rate_key(queue_key(queue.name))
    await redis.rpush(broken, b'not a limit')  # WRONGTYPE in the script
    brokers.append(RedisBroker(DSN))
    broker = brokers[0]
    await broker[queue].send_many([Job(1), Job(2)])
    async with Worker(broker=broker):
        await eventually(lambda: _problems(broker), timeout=10)
        assert not handled
        await redis.delete(broken)
        await eventually(lambda: _true(len(handled) == 2), timeout=20)
        assert not await broker.readiness()


async def _problems(broker: RedisBroker) -> bool:
    return any('failed' in problem for problem in await broker.readiness())


async def test_a_limit_around_a_call_is_shared_by_two_brokers(brokers: list[RedisBroker], unique: str) -> None:
    rate = Rate(40, burst=4)
    loop = asyncio.get_running_loop()
    brokers += [RedisBroker(DSN), RedisBroker(DSN)]
    times: list[float] = []

    async def calls(agent: MicroAgent) -> None:
        for _ in range(10):
            async with agent.limit(f'smtp{unique}', rate):
                times.append(loop.time())

    async with MicroAgent(broker=brokers[0]) as one, MicroAgent(broker=brokers[1]) as two:
        start = loop.time()
        await asyncio.gather(calls(one), calls(two))
    check_bound([start, *times], rate, held=0)
    assert times[-1] - start >= (20 - 4) / 40 - 0.01
