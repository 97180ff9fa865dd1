"""What a middleware costs per message: drain a memory queue with no middleware, with one that only
passes the call on, and with the Prometheus metrics middleware; the difference per message is the
middleware's cost (the memory backend has no server, so it is all client CPU).

    python -m benchmarks.bench_middleware [--count N] [--rounds R]
"""
from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import msgspec
from prometheus_client import CollectorRegistry

from microagent import MicroAgent, Middleware, Queue, consumer
from microagent.metrics import PrometheusMiddleware
from microagent.middleware import MiddlewareLike
from microagent.tools.memory import MemoryBroker

from .harness import median


class Job(msgspec.Struct, frozen=True):
    n: int


async def drain_seconds(count: int, middlewares: list[MiddlewareLike]) -> float:
    """Seconds to handle ``count`` queued messages (queued before the consumer starts)."""
    queue = Queue(f'bench_mw_{uuid.uuid4().hex[:8]}', Job)
    done = asyncio.Event()
    handled = 0

    class Worker(MicroAgent):
        @consumer(queue, concurrency=8)
        async def work(self, job: Job) -> None:
            nonlocal handled
            handled += 1
            if handled == count:
                done.set()

    broker = MemoryBroker()
    await broker[queue].send_many([Job(n=i) for i in range(count)])
    agent = Worker(broker=broker, middlewares=middlewares)
    start = time.perf_counter()
    await agent.start()
    await done.wait()
    elapsed = time.perf_counter() - start
    await agent.stop()
    await broker.close()
    return elapsed


async def main(count: int, rounds: int) -> None:
    variants: dict[str, list[MiddlewareLike]] = {
        'none': [], 'pass-through': [Middleware()], 'prometheus': [PrometheusMiddleware(CollectorRegistry())]}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):  # alternating, so that load on the machine hits every variant alike
        for name, middlewares in variants.items():
            times[name].append(await drain_seconds(count, middlewares))
    base = median(times['none']) / count
    print(f'\nMiddleware cost per handled message (memory broker, {count:,} messages, median of {rounds} rounds)')
    print(f'{"middlewares":<14} {"us/msg":>8} {"added us/msg":>13}')
    for name in variants:
        per = median(times[name]) / count
        print(f'{name:<14} {per * 1e6:>8.2f} {(per - base) * 1e6:>13.2f}')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--count', type=int, default=50_000)
    parser.add_argument('--rounds', type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.rounds))
