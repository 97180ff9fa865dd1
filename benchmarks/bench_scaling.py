"""Scaling out: 1, 2 and 4 consumer processes on one prefilled queue, per backend, and the
throughput ratio to one process.

Two handlers: ``io`` awaits ``asyncio.sleep(0.001)`` (a handler waiting on I/O; many run at
once), ``cpu`` burns a fixed amount of CPU (about 1 ms). Timing starts when every process is
connected and ends when the last message is handled. On a machine with N cores expect at most
about N x for the CPU-bound row.

``python -m benchmarks.bench_scaling [--messages N] [--targets redis,redis-cluster,amqp,amqp-quorum]``.
``redis-cluster`` uses ``MICROAGENT_BENCH_REDIS_CLUSTER`` (a ``redis+cluster://`` DSN) or else starts
the test suite's loopback cluster (3 masters, 3 replicas, ports 7101-7106) for the run. A new backend
is one entry in ``TARGETS``.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import multiprocessing
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

import msgspec

from microagent import MicroAgent, Queue, consumer
from microagent.broker import AbstractQueueBroker

REDIS_DSN = os.environ.get('MICROAGENT_BENCH_REDIS', 'redis://127.0.0.1:6379/8')
AMQP_DSN = os.environ.get('MICROAGENT_BENCH_AMQP', 'amqp://guest:guest@127.0.0.1:5672/')
CLUSTER_DSN = os.environ.get('MICROAGENT_BENCH_REDIS_CLUSTER', '')
PROCESSES = (1, 2, 4)
CONCURRENCY = 32  # handlers per process
CPU_LOOPS = 20_000  # about 1 ms of Python on this machine


@dataclass(frozen=True)
class Target:
    """A broker to measure: its class (dotted path), DSN and keyword arguments."""

    broker: str
    dsn: str
    options: dict[str, Any] = field(default_factory=dict)

    def make(self) -> AbstractQueueBroker:
        module, _, name = self.broker.rpartition('.')
        cls = getattr(importlib.import_module(module), name)
        broker: AbstractQueueBroker = cls(self.dsn, **self.options)
        return broker


TARGETS: dict[str, Target] = {
    'redis': Target('microagent.backends.redis.RedisBroker', REDIS_DSN),
    'redis-cluster': Target('microagent.backends.redis.RedisBroker', CLUSTER_DSN),
    'amqp': Target('microagent.backends.amqp.AMQPBroker', AMQP_DSN),
    'amqp-quorum': Target('microagent.backends.amqp.AMQPBroker', AMQP_DSN, {'queue_type': 'quorum'}),
}


class Job(msgspec.Struct, frozen=True):
    n: int


def _burn() -> int:
    total = 0
    for i in range(CPU_LOOPS):
        total += i * i
    return total


def _worker(target: Target, queue_name: str, workload: str, ready: Event, go: Event, stop: Event,
            handled: Synchronized[int]) -> None:
    """One consumer process: connect, say ready, consume from ``go`` until ``stop``."""
    queue = Queue(queue_name, Job)

    class Worker(MicroAgent):
        @consumer(queue, concurrency=CONCURRENCY, max_retries=0)
        async def work(self, job: Job) -> None:
            if workload == 'io':
                await asyncio.sleep(0.001)
            else:
                _burn()
            with handled.get_lock():
                handled.value += 1

    async def run() -> None:
        broker = target.make()
        await broker[queue].length()  # connected
        ready.set()
        await asyncio.to_thread(go.wait)
        async with Worker(broker=broker):
            await asyncio.to_thread(stop.wait)
        await broker.close()

    asyncio.run(run())


async def _prefill(target: Target, queue: Queue[Job], count: int) -> AbstractQueueBroker:
    broker = target.make()
    for start in range(0, count, 1000):
        await broker[queue].send_many([Job(n=i) for i in range(start, min(start + 1000, count))])
    return broker


async def _cleanup(name: str, target: Target, broker: AbstractQueueBroker) -> None:
    """Delete what one run declared (the queue and its companions)."""
    from microagent.backends.amqp import AMQPBroker
    from microagent.backends.redis import RedisBroker
    from microagent.backends.redis.cluster import is_cluster

    # the loopback cluster goes with the run; a given one keeps the keys
    if isinstance(broker, RedisBroker) and not is_cluster(target.dsn):
        from redis.asyncio import Redis

        client = Redis.from_url(target.dsn)
        await client.delete(name)
        async for key in client.scan_iter(match=f'{name}:*'):
            await client.delete(key)
        await client.aclose()
    elif isinstance(broker, AMQPBroker):
        import aiormq

        connection = await aiormq.connect(target.dsn)
        channel = await connection.channel()
        for queue in broker.transport.declared_queues:
            await channel.queue_delete(queue)
        for exchange in broker.transport.declared_exchanges:
            await channel.exchange_delete(exchange)
        await connection.close()
    await broker.close()


def measure(target: Target, workload: str, processes: int, messages: int) -> float:
    """Messages per second handled by ``processes`` consumer processes."""
    name = f'bench_scaling_{uuid.uuid4().hex[:10]}'
    queue = Queue(name, Job)
    loop = asyncio.new_event_loop()
    try:
        broker = loop.run_until_complete(_prefill(target, queue, messages))
        ctx = multiprocessing.get_context('spawn')
        handled = ctx.Value('q', 0)
        go, stop = ctx.Event(), ctx.Event()
        readies = [ctx.Event() for _ in range(processes)]
        workers = [ctx.Process(target=_worker, args=(target, name, workload, ready, go, stop, handled))
                   for ready in readies]
        for worker in workers:
            worker.start()
        for ready in readies:
            if not ready.wait(60):
                raise RuntimeError('a consumer process did not connect in 60 s')
        started = time.perf_counter()
        go.set()
        while handled.value < messages:  # another process's counter: poll it
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
        stop.set()
        for worker in workers:
            worker.join(30)
        loop.run_until_complete(_cleanup(name, target, broker))
        return messages / elapsed
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m benchmarks.bench_scaling', description=__doc__.split('\n')[0])
    parser.add_argument('--messages', type=int, default=10000,
                        help='messages per io run (default 10000; a cpu run takes a fifth)')
    parser.add_argument('--targets', default=','.join(TARGETS), help=f'comma-separated, of {", ".join(TARGETS)}')
    args = parser.parse_args(argv)
    print(f'Scaling: consumer processes on one queue, {args.messages} messages (io) and '
          f'{args.messages // 5} (cpu), {CONCURRENCY} handlers per process, {os.cpu_count()} CPU(s), '
          f'load average {os.getloadavg()[0]:.1f}')
    print(f'{"backend":<13} {"handler":<8} ' + ' '.join(f'{f"{n} proc":>10} {"x":>5}' for n in PROCESSES))
    with ExitStack() as stack:
        for target_name in args.targets.split(','):
            target = TARGETS[target_name]
            if target_name == 'redis-cluster' and not target.dsn:
                target = Target(target.broker, stack.enter_context(_loopback_cluster()))
            for workload in ('io', 'cpu'):
                count = args.messages if workload == 'io' else max(args.messages // 5, 1)
                rates = [measure(target, workload, n, count) for n in PROCESSES]
                cells = ' '.join(f'{r:>10,.0f} {r / rates[0]:>5.2f}' for r in rates)
                print(f'{target_name:<13} {workload:<8} {cells}', flush=True)


@contextmanager
def _loopback_cluster() -> Iterator[str]:
    """The test suite's Redis Cluster on loopback ports, for this run only: its DSN."""
    from tests.redis_cluster_support import start_cluster, stop_cluster

    cluster = start_cluster()
    try:
        yield cluster.dsn
    finally:
        stop_cluster(cluster)


if __name__ == '__main__':
    main()
