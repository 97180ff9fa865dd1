"""microagent's AMQP backend against raw aiormq doing the same work on the same RabbitMQ, in one run.

    python -m benchmarks.bench_amqp [--messages 1000] [--calls 200] [--rounds 5] [--dsn amqp://...]

Both sides publish persistent JSON with publisher confirms, consume with prefetch 32 and ack each
message after decoding it into the same msgspec model, and answer RPC through a reply queue. As in
every benchmark table here, a ratio above 1 means faster than raw; below 1 is the price of
microagent's validation, delivery bookkeeping and handler calling. microagent also sends every
message's headers (ids, time, trace) in the AMQP headers table, which the raw side does not: the
indented row under the signal one measures what such a table costs raw aiormq and RabbitMQ alone.
"""
from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.metadata import version
from typing import Any

import aiormq
import msgspec
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.backends.amqp import AMQPBroker, AMQPSignalBus
from microagent.message import MESSAGE_ID, new_headers

from .harness import ROUNDS, Row, Side, alternate, latency_rows, median, print_table, rate_row, scaled

PREFETCH = 32
TARGET = 0.9  # the goal: every row at least 0.9x of raw aiormq


def persistent_json() -> spec.Basic.Properties:
    # a new object per message, as aiormq writes the message_id into it
    return spec.Basic.Properties(content_type='application/json', delivery_mode=2)


class Job(msgspec.Struct, frozen=True):
    job_id: int
    text: str = 'benchmark'


_decode_job = msgspec.json.Decoder(Job).decode
_encode = msgspec.json.encode


class Counter:
    """Counts handled messages; ``done`` is set at ``target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()


async def timed(action: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


class Bench:
    def __init__(self, dsn: str, messages: int, calls: int, rounds: int) -> None:
        self.dsn = dsn
        self.n = messages
        self.calls = calls
        self.rounds = rounds
        self.tag = uuid.uuid4().hex[:8]
        self.queues: list[str] = []
        self.exchanges: list[str] = []
        self.rows: list[Row] = []
        self.raw: aiormq.abc.AbstractConnection | None = None

    async def channel(self, publisher_confirms: bool = True) -> AbstractChannel:
        assert self.raw is not None
        return await self.raw.channel(publisher_confirms=publisher_confirms)

    def queue(self, label: str) -> Queue[Job]:
        queue = Queue(f'bench_{label}_{self.tag}', Job)
        self.queues += [queue.name, f'{queue.name}.dead']
        self.exchanges.append(f'{queue.name}.dead')
        return queue

    async def compare(self, label: str, ours: Side, raw: Side, *extra: tuple[str, Side],
                      target: float | None = None) -> None:
        """Alternate the sides ``rounds`` times (ours, raw, then each ``extra`` raw variant), so a
        load that drifts during the run (a shared machine) weighs on all alike; a row per variant,
        shown against the plain raw one."""
        await alternate([ours, raw, *(side for _, side in extra)], self.rounds)
        self.rows.append(rate_row(label, self.n, ours, raw, target=target))
        for name, side in extra:
            self.rows.append(rate_row(name, self.n, side, raw, note='raw vs raw: the wire cost'))

    # broker

    async def sequential_send(self, broker: AMQPBroker) -> None:
        ours_q, raw_q = self.queue('seq'), self.queue('seq_raw')
        bound = broker[ours_q]
        await bound.declare()
        channel = await self.channel()
        await channel.queue_declare(raw_q.name, durable=True)

        async def ours() -> None:
            for i in range(self.n):
                await bound.send(Job(job_id=i))

        async def raw() -> None:
            for i in range(self.n):
                await channel.basic_publish(_encode(Job(job_id=i)), routing_key=raw_q.name,
                                            properties=persistent_json())

        await self.compare('sequential send (confirmed)', Side(ours), Side(raw), target=TARGET)

    async def batched_send(self, broker: AMQPBroker) -> None:
        ours_q, raw_q = self.queue('batch'), self.queue('batch_raw')
        bound = broker[ours_q]
        await bound.declare()
        channel = await self.channel()
        await channel.queue_declare(raw_q.name, durable=True)
        jobs = [Job(job_id=i) for i in range(self.n)]

        async def raw() -> None:
            await asyncio.gather(*(channel.basic_publish(_encode(job), routing_key=raw_q.name,
                                                         properties=persistent_json()) for job in jobs))

        await self.compare('batched send (send_many)', Side(partial(bound.send_many, jobs)),
                           Side(raw), target=TARGET)

    async def drain(self, broker: AMQPBroker) -> None:
        ours_q, raw_q = self.queue('drain'), self.queue('drain_raw')
        jobs = [Job(job_id=i) for i in range(self.n)]
        ours_done = Counter(self.n)

        class Worker(MicroAgent):
            @consumer(ours_q, concurrency=PREFETCH)
            async def work(self, job: Job) -> None:
                ours_done.hit()

        agent = Worker(broker=broker)

        async def fill() -> None:
            nonlocal agent
            await broker[ours_q].send_many(jobs)
            ours_done.count = 0
            ours_done.done.clear()
            agent = Worker(broker=broker)

        async def ours() -> None:
            await agent._start()
            await ours_done.done.wait()

        async def stop() -> None:
            await agent.stop()

        async def fill_raw() -> None:
            await broker[raw_q].send_many(jobs)

        async def raw() -> None:
            done = Counter(self.n)
            channel = await self.channel()
            await channel.basic_qos(prefetch_count=PREFETCH)

            async def on_message(message: DeliveredMessage) -> None:
                _decode_job(message.body)
                await channel.basic_ack(message.delivery_tag or 0)
                done.hit()

            await channel.basic_consume(raw_q.name, on_message)
            await done.done.wait()
            await channel.close()

        await self.compare(f'drain {self.n} with acks (prefetch {PREFETCH})', Side(ours, fill, stop),
                           Side(raw, fill_raw), target=TARGET)

    # bus

    async def signals(self, sender: AMQPSignalBus, listener: AMQPSignalBus) -> None:
        signal = Signal(f'bench_signal_{self.tag}', Job)
        counter = Counter(self.n)

        class Listener(MicroAgent):
            @receiver(signal)
            async def on_job(self, job: Job) -> None:
                counter.hit()

        def restart() -> None:
            counter.count = 0
            counter.done.clear()

        async def ours() -> None:
            restart()
            for i in range(self.n):
                await sender[signal].send('bench', Job(job_id=i))
            await counter.done.wait()

        exchange = f'bench_raw_{self.tag}'
        self.exchanges.append(exchange)
        channel = await self.channel()
        await channel.exchange_declare(exchange, exchange_type='topic', durable=True)
        declared = await channel.queue_declare('', exclusive=True, auto_delete=True)
        assert declared.queue
        await channel.queue_bind(declared.queue, exchange, routing_key='job.#')

        async def on_message(message: DeliveredMessage) -> None:
            _decode_job(message.body)
            counter.hit()

        await channel.basic_consume(declared.queue, on_message, no_ack=True)
        publisher = await self.channel(publisher_confirms=True)

        async def raw() -> None:
            restart()
            for i in range(self.n):
                await publisher.basic_publish(_encode(Job(job_id=i)), exchange=exchange, routing_key='job.bench',
                                              properties=spec.Basic.Properties(content_type='application/json'))
            await counter.done.wait()

        async def raw_headers() -> None:
            """The raw side with the headers table microagent sends (its envelope's headers)."""
            restart()
            for i in range(self.n):
                headers: dict[str, Any] = new_headers()
                await publisher.basic_publish(_encode(Job(job_id=i)), exchange=exchange, routing_key='job.bench',
                                              properties=spec.Basic.Properties(
                                                  content_type='application/json', headers=headers,
                                                  message_id=headers[MESSAGE_ID]))
            await counter.done.wait()

        async with Listener(bus=listener):
            await self.compare('signal send-to-receive', Side(ours), Side(raw),
                               ('  raw with our headers table (AMQP headers)', Side(raw_headers)), target=TARGET)

    async def rpc(self, caller: AMQPSignalBus, answerer: AMQPSignalBus) -> None:
        signal = Signal(f'bench_rpc_{self.tag}', Job, returns=int)

        class Answerer(MicroAgent):
            @receiver(signal)
            async def answer(self, job: Job) -> int:
                return job.job_id

        async def ours_call(i: int) -> None:
            await caller[signal].call('bench', Job(job_id=i), timeout=10)

        exchange = f'bench_rpc_raw_{self.tag}'
        self.exchanges.append(exchange)
        server = await self.channel()
        await server.exchange_declare(exchange, exchange_type='topic', durable=True)
        requests = await server.queue_declare('', exclusive=True, auto_delete=True)
        assert requests.queue
        await server.queue_bind(requests.queue, exchange, routing_key='rpc.#')

        async def serve(message: DeliveredMessage) -> None:
            job = _decode_job(message.body)
            props = message.header.properties
            await server.basic_publish(_encode({'Raw.answer': job.job_id}), routing_key=props.reply_to or '',
                                       properties=spec.Basic.Properties(correlation_id=props.correlation_id))

        await server.basic_consume(requests.queue, serve, no_ack=True)
        client = await self.channel()
        replies = await client.queue_declare('', exclusive=True, auto_delete=True)
        assert replies.queue
        waiting: dict[str, asyncio.Future[int]] = {}

        async def on_reply(message: DeliveredMessage) -> None:
            future = waiting.pop(message.header.properties.correlation_id or '', None)
            if future is not None:
                future.set_result(msgspec.json.decode(message.body, type=dict[str, int])['Raw.answer'])

        await client.basic_consume(replies.queue, on_reply, no_ack=True)

        async def raw_call(i: int) -> None:
            request_id = uuid.uuid4().hex
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            waiting[request_id] = future
            await client.basic_publish(_encode(Job(job_id=i)), exchange=exchange, routing_key='rpc.bench',
                                       properties=spec.Basic.Properties(correlation_id=request_id,
                                                                        reply_to=replies.queue))
            await asyncio.wait_for(future, 10)

        async with Answerer(bus=answerer):
            await self.latencies('RPC round trip p50 (raw: reply_to + correlation_id)', ours_call, raw_call, TARGET)

    async def latencies(self, label: str, ours_call: Callable[[int], Awaitable[None]],
                        raw_call: Callable[[int], Awaitable[None]], target: float | None = None) -> None:
        """p50 and p99 rows of ``calls`` calls per side and round, the sides alternating."""
        samples: dict[str, list[list[float]]] = {'ours': [], 'raw': []}

        def side(name: str, call: Callable[[int], Awaitable[None]]) -> Side:
            async def run() -> None:
                times = []
                for i in range(self.calls):
                    times.append(await timed(partial(call, i)))
                samples[name].append(times)
            return Side(run)

        sides = side('ours', ours_call), side('raw', raw_call)
        await alternate(sides, self.rounds)
        cpu = (median(sides[0].cpu) / self.calls * 1e6, median(sides[1].cpu) / self.calls * 1e6)
        self.rows += latency_rows(label, samples['ours'][1:], samples['raw'][1:], target, cpu)

    async def run(self) -> None:
        self.raw = await aiormq.connect(self.dsn)
        broker = AMQPBroker(self.dsn)
        buses = [AMQPSignalBus(self.dsn, prefix=f'bench_{self.tag}') for _ in range(2)]
        self.exchanges.append(f'bench_{self.tag}')
        try:
            await self.sequential_send(broker)
            await self.batched_send(broker)
            await self.drain(broker)
            await self.signals(*buses)
            await self.rpc(*buses)
        finally:
            await broker.close()
            for bus in buses:
                await bus.close()
            channel = await self.channel()
            for name in self.queues:
                await channel.queue_delete(name)
            for name in self.exchanges:
                await channel.exchange_delete(name)
            await self.raw.close()

    def print(self) -> None:
        print_table(f'microagent on RabbitMQ vs raw aiormq {version("aiormq")}: {self.n} messages and '
                    f'{self.calls} calls per round, {self.rounds} alternating rounds', self.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dsn', default='amqp://guest:guest@127.0.0.1:5672/')
    parser.add_argument('--messages', type=int, default=scaled(1000))
    parser.add_argument('--calls', type=int, default=scaled(200))
    parser.add_argument('--rounds', type=int, default=ROUNDS)
    args = parser.parse_args()
    bench = Bench(args.dsn, args.messages, args.calls, args.rounds)
    asyncio.run(bench.run())
    bench.print()


if __name__ == '__main__':
    main()
