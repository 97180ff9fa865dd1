"""Rate limiter overhead: drain a pre-filled queue with a rate limit far above what the consumer
reaches (so it never waits) against no limit, alternating the two in each round; the median of the
per-round throughput ratios and the client CPU per message of each. Then the cost of one
``async with agent.limit(...)`` (a take: in process on memory, one script round trip on Redis).

    python -m benchmarks.bench_rate [--count N] [--rounds R] [--redis DSN]

On the shared 2-core machine under load (load average about 6), 20,000 messages, 9 rounds:
memory 1.02x (0.55-1.30), +0.08 us CPU/msg, one limit() 1.8 us CPU; Redis 0.97x (0.63-1.36),
+0.01 us CPU/msg (a second run of 5 rounds: 0.71x, +1.8 us), one limit() a round trip, 280 us wall,
100 us CPU. The noise is larger than the cost: a limited Redis consumer makes one script call per
fetch (126 for 20,000 messages, about 105 us CPU each: about 0.7 us CPU per message).
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from microagent import AbstractQueueBroker, MicroAgent, Queue, Rate, consumer
from microagent.backends.memory import MemoryBroker

#: far above any drain rate here: the limiter grants every fetch in full
HIGH = Rate(10**8, burst=10**6)


class Job(msgspec.Struct, frozen=True):
    n: int


async def drain(make_broker: Callable[[], AbstractQueueBroker], count: int, rate: Rate | None) -> tuple[float, float]:
    """(messages per second, client CPU microseconds per message) to handle ``count`` queued messages."""
    queue = Queue(f'bench_rate_{uuid.uuid4().hex[:8]}', Job)
    done = asyncio.Event()
    handled = 0

    class Worker(MicroAgent):
        @consumer(queue, rate=rate)
        async def work(self, job: Job) -> None:
            nonlocal handled
            handled += 1
            if handled >= count:
                done.set()

    broker = make_broker()
    for start in range(0, count, 1000):
        await broker[queue].send_many([Job(n) for n in range(start, min(start + 1000, count))])
    agent = Worker(broker=broker)
    wall, cpu = time.perf_counter(), time.process_time()
    await agent.start()
    await done.wait()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await agent.stop()
    await _drop(broker, [queue.name, f'microagent:rate:queue:{queue.name}'])
    await broker.close()
    return count / wall, cpu / count * 1e6


async def _drop(broker: AbstractQueueBroker, keys: list[str]) -> None:
    client: Any = getattr(broker.transport, 'redis', None)
    if client is not None:
        await client.delete(*keys)


async def limit_cost(make_broker: Callable[[], AbstractQueueBroker], calls: int) -> tuple[float, float]:
    """(wall, client CPU) microseconds per ``async with agent.limit(...)`` that never waits."""
    broker = make_broker()
    name = f'bench_{uuid.uuid4().hex[:8]}'
    async with MicroAgent(broker=broker) as agent:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            async with agent.limit(name, HIGH):
                pass
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await _drop(broker, [f'microagent:rate:limit:{name}'])
    await broker.close()
    return wall / calls * 1e6, cpu / calls * 1e6


async def compare(label: str, make_broker: Callable[[], AbstractQueueBroker], count: int, rounds: int) -> None:
    ratios: list[float] = []
    rates: dict[bool, list[float]] = {True: [], False: []}
    cpus: dict[bool, list[float]] = {True: [], False: []}
    await drain(make_broker, min(count, 2000), HIGH)  # warm-up
    for _ in range(rounds):
        for limited in (True, False):
            rate, cpu = await drain(make_broker, count, HIGH if limited else None)
            rates[limited].append(rate)
            cpus[limited].append(cpu)
        ratios.append(rates[True][-1] / rates[False][-1])
    overhead = [a - b for a, b in zip(cpus[True], cpus[False], strict=True)]
    wall, cpu = await limit_cost(make_broker, 2000)
    print(f'{label}: drain of {count:,} with rate={HIGH.count:g}/s: {statistics.median(rates[True]):,.0f} msg/s, '
          f'{statistics.median(cpus[True]):.1f} us CPU/msg; no limit: {statistics.median(rates[False]):,.0f} msg/s, '
          f'{statistics.median(cpus[False]):.1f} us CPU/msg; ratio {statistics.median(ratios):.2f}x '
          f'({min(ratios):.2f}-{max(ratios):.2f}, {rounds} rounds), CPU overhead {statistics.median(overhead):+.2f} '
          f'us/msg; one limit(): {wall:.1f} us wall, {cpu:.1f} us CPU')


async def main(count: int, rounds: int, redis: str | None) -> None:
    await compare('memory', MemoryBroker, count, rounds)
    if redis:
        from microagent.backends.redis import RedisBroker

        await compare('redis', lambda: RedisBroker(redis), count, rounds)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--count', type=int, default=20_000)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--redis', default='redis://127.0.0.1:6379/12')
    args = parser.parse_args()
    asyncio.run(main(args.count, args.rounds, args.redis or None))
