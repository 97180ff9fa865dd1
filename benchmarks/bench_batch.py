"""Batch consumers: drain a pre-filled queue with ``batch=100`` against the one-message consumer
(default concurrency, 32) on the same backend, alternating the two in each round; the median of
the per-round ratios with its range, and the client CPU per message of each.

    python -m benchmarks.bench_batch [--count N] [--rounds R] [--redis DSN]
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

from microagent import AbstractQueueBroker, MicroAgent, Queue, consumer
from microagent.backends.memory import MemoryBroker


class Job(msgspec.Struct, frozen=True):
    n: int


async def drain(make_broker: Callable[[], AbstractQueueBroker], count: int, batch: int | None) -> tuple[float, float]:
    """(messages per second, client CPU microseconds per message) to handle ``count`` queued messages."""
    queue = Queue(f'bench_batch_{uuid.uuid4().hex[:8]}', Job)
    done = asyncio.Event()
    handled = 0

    def note(number: int) -> None:
        nonlocal handled
        handled += number
        if handled >= count:
            done.set()

    if batch is not None:
        size = batch

        class Batched(MicroAgent):
            @consumer(queue, batch=size, batch_wait=0.01)
            async def work(self, jobs: list[Job]) -> None:
                note(len(jobs))
        agent_class: type[MicroAgent] = Batched
    else:
        class Single(MicroAgent):
            @consumer(queue)
            async def work(self, job: Job) -> None:
                note(1)
        agent_class = Single

    broker = make_broker()
    for start in range(0, count, 1000):
        await broker[queue].send_many([Job(n) for n in range(start, min(start + 1000, count))])
    agent = agent_class(broker=broker)
    wall, cpu = time.perf_counter(), time.process_time()
    await agent.start()
    await done.wait()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await agent.stop()
    await _drop(broker, queue.name)
    await broker.close()
    return count / wall, cpu / count * 1e6


async def _drop(broker: AbstractQueueBroker, name: str) -> None:
    client: Any = getattr(broker.transport, 'client', None)
    if client is not None:  # Redis: the queue's keys
        await client.delete(name)


async def compare(label: str, make_broker: Callable[[], AbstractQueueBroker], count: int, rounds: int) -> None:
    ratios: list[float] = []
    rates: dict[int | None, list[float]] = {100: [], None: []}
    cpus: dict[int | None, list[float]] = {100: [], None: []}
    await drain(make_broker, min(count, 2000), 100)  # warm-up
    for _ in range(rounds):
        for batch in (100, None):
            rate, cpu = await drain(make_broker, count, batch)
            rates[batch].append(rate)
            cpus[batch].append(cpu)
        ratios.append(rates[100][-1] / rates[None][-1])
    print(f'{label}: drain of {count:,} with batch=100: {statistics.median(rates[100]):,.0f} msg/s, '
          f'{statistics.median(cpus[100]):.1f} us CPU/msg; one message per call: '
          f'{statistics.median(rates[None]):,.0f} msg/s, {statistics.median(cpus[None]):.1f} us CPU/msg; '
          f'ratio {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}, {rounds} rounds)')


async def main(count: int, rounds: int, redis: str | None) -> None:
    await compare('memory', MemoryBroker, count, rounds)
    if redis:
        from microagent.backends.redis import RedisBroker

        await compare('redis', lambda: RedisBroker(redis), count, rounds)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--count', type=int, default=20_000)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--redis', default='redis://127.0.0.1:6379/11')
    args = parser.parse_args()
    asyncio.run(main(args.count, args.rounds, args.redis or None))
