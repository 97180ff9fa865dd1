"""microagent's AMQP backend against raw aiormq doing the same work on the same RabbitMQ, in one run.

    python -m benchmarks.bench_amqp [--messages 1000] [--calls 200] [--retained 10000] [--rounds 5]
                                    [--only send,drain,signals,groups,rpc] [--dsn amqp://...]

Both sides publish persistent JSON with publisher confirms, consume with prefetch 32 and ack each
message after decoding it into the same msgspec model, and answer RPC through a reply queue. As in
every benchmark table here, a ratio above 1 means faster than raw; below 1 is the price of
microagent's validation, delivery bookkeeping and handler calling. microagent also sends every
message's headers (ids, time, trace) in the AMQP headers table, which the raw side does not: the
indented row under the signal one measures what such a table costs raw aiormq and RabbitMQ alone.
Signals and RPC go from one client to another on both sides: microagent's two buses have a
connection each, and so do raw's sender and listener (caller and server).

Signal groups: a grouped receiver (one member, concurrency = prefetch 32) against raw aiormq
publishing persistent JSON to a topic exchange bound to a durable queue and consuming it with acks:
signals sent one by one until handled, and a drain of ``--retained`` signals kept in the store
while no member ran (sent untimed, in batches, the raw ones with the headers table microagent's
carry, as the queue drain's raw side drains what microagent sent; the clock runs from the
member's start).
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
GROUP_TARGET = 0.8  # issue #21's goal for grouped signals
SECTIONS = frozenset(('send', 'drain', 'signals', 'groups', 'rpc'))


def persistent_json() -> spec.Basic.Properties:
    # a new object per message, as aiormq writes the message_id into it
    return spec.Basic.Properties(content_type='application/json', delivery_mode=2)


def with_headers() -> spec.Basic.Properties:
    """Persistent JSON with the headers table microagent sends (ids, time): what a store holds."""
    headers: dict[str, Any] = new_headers()
    return spec.Basic.Properties(content_type='application/json', delivery_mode=2, headers=headers,
                                 message_id=headers[MESSAGE_ID])


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
    def __init__(self, dsn: str, messages: int, calls: int, rounds: int, retained: int = 10_000,
                 only: frozenset[str] = SECTIONS) -> None:
        self.dsn = dsn
        self.only = only
        self.n = messages
        self.retained = retained
        self.calls = calls
        self.rounds = rounds
        self.tag = uuid.uuid4().hex[:8]
        self.queues: list[str] = []
        self.exchanges: list[str] = []
        self.rows: list[Row] = []
        self.raw: aiormq.abc.AbstractConnection | None = None
        self.peer: aiormq.abc.AbstractConnection | None = None  # the raw listener's or server's own

    async def channel(self, publisher_confirms: bool = True) -> AbstractChannel:
        assert self.raw is not None
        return await self.raw.channel(publisher_confirms=publisher_confirms)

    async def peer_channel(self) -> AbstractChannel:
        """A channel of the raw side's second client, which receives signals and answers calls."""
        assert self.peer is not None
        return await self.peer.channel(publisher_confirms=True)

    def queue(self, label: str) -> Queue[Job]:
        queue = Queue(f'bench_{label}_{self.tag}', Job)
        self.queues += [queue.name, f'{queue.name}.dead']
        self.exchanges.append(f'{queue.name}.dead')
        return queue

    async def compare(self, label: str, ours: Side, raw: Side, *extra: tuple[str, Side],
                      target: float | None = None, count: int = 0) -> None:
        """Alternate the sides ``rounds`` times (ours, raw, then each ``extra`` raw variant), so a
        load that drifts during the run (a shared machine) weighs on all alike; a row per variant,
        shown against the plain raw one."""
        await alternate([ours, raw, *(side for _, side in extra)], self.rounds)
        self.rows.append(rate_row(label, count or self.n, ours, raw, target=target))
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
        channel = await self.peer_channel()
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

    # signal groups

    def member(self, signal: Signal[Job, None], counter: Counter) -> type[MicroAgent]:
        class Member(MicroAgent):
            @receiver(signal, group='bench', concurrency=PREFETCH)
            async def on_job(self, job: Job) -> None:
                counter.hit()

        return Member

    async def raw_store(self, label: str) -> tuple[str, str]:
        """A raw topic exchange and a durable queue bound to it with ``job.#``: what a group is."""
        exchange = queue = f'bench_{label}_raw_{self.tag}'
        self.exchanges.append(exchange)
        self.queues.append(queue)
        channel = await self.channel()
        await channel.exchange_declare(exchange, exchange_type='topic', durable=True)
        await channel.queue_declare(queue, durable=True)
        await channel.queue_bind(queue, exchange, routing_key='job.#')
        await channel.close()
        return exchange, queue

    async def raw_consume(self, queue: str, done: Counter) -> AbstractChannel:
        channel = await self.peer_channel()  # the member is a client of its own, as microagent's is
        await channel.basic_qos(prefetch_count=PREFETCH)

        async def on_message(message: DeliveredMessage) -> None:
            _decode_job(message.body)
            await channel.basic_ack(message.delivery_tag or 0)
            done.hit()

        await channel.basic_consume(queue, on_message)
        return channel

    def group_store(self, bus: AMQPSignalBus, signal: Signal[Job, None]) -> None:
        store = f'{bus.prefix}.group.{signal.name}@bench'
        self.queues += [store, f'{store}.dead']
        self.exchanges.append(f'{store}.dead')

    async def grouped_signals(self, sender: AMQPSignalBus, listener: AMQPSignalBus) -> None:
        signal = Signal(f'bench_group_{self.tag}', Job)
        self.group_store(listener, signal)
        counter = Counter(self.n)
        exchange, queue = await self.raw_store('group')
        consuming = await self.raw_consume(queue, counter)
        publisher = await self.channel()

        def restart() -> None:
            counter.count = 0
            counter.done.clear()

        async def ours() -> None:
            restart()
            for i in range(self.n):
                await sender[signal].send('bench', Job(job_id=i))
            await counter.done.wait()

        async def raw() -> None:
            restart()
            for i in range(self.n):
                await publisher.basic_publish(_encode(Job(job_id=i)), exchange=exchange, routing_key='job.bench',
                                              properties=persistent_json())
            await counter.done.wait()

        async with self.member(signal, counter)(bus=listener):
            await self.compare('grouped signal send-to-handled (one member)', Side(ours), Side(raw),
                               target=GROUP_TARGET)
        await consuming.close()
        await publisher.close()

    async def grouped_drain(self, sender: AMQPSignalBus, listener: AMQPSignalBus) -> None:
        signal = Signal(f'bench_group_drain_{self.tag}', Job)
        self.group_store(listener, signal)
        n = self.retained
        counter = Counter(n)
        member = self.member(signal, counter)
        async with member(bus=listener):
            pass  # the group exists from now on
        exchange, queue = await self.raw_store('group_drain')
        publisher = await self.channel()
        jobs = [Job(job_id=i) for i in range(n)]
        chunk = 500

        agents: list[MicroAgent] = []
        channels: list[AbstractChannel] = []
        done = Counter(n)

        async def fill() -> None:
            for first in range(0, n, chunk):
                await asyncio.gather(*(sender[signal].send('bench', job) for job in jobs[first:first + chunk]))
            counter.count = 0
            counter.done.clear()
            agents.append(member(bus=listener))

        async def ours() -> None:
            await agents[-1]._start()
            await counter.done.wait()

        async def stop() -> None:
            await agents.pop().stop()

        async def fill_raw() -> None:
            for first in range(0, n, chunk):
                await asyncio.gather(*(publisher.basic_publish(_encode(job), exchange=exchange, routing_key='job.bench',
                                                               properties=with_headers())
                                       for job in jobs[first:first + chunk]))
            done.count = 0
            done.done.clear()

        async def raw() -> None:
            channels.append(await self.raw_consume(queue, done))
            await done.done.wait()

        async def close_raw() -> None:
            await channels.pop().close()

        await self.compare(f'grouped drain of {n} retained signals (prefetch {PREFETCH})', Side(ours, fill, stop),
                           Side(raw, fill_raw, close_raw), count=n, target=GROUP_TARGET)
        await publisher.close()

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
        server = await self.peer_channel()
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
        self.peer = await aiormq.connect(self.dsn)
        broker = AMQPBroker(self.dsn)
        buses = [AMQPSignalBus(self.dsn, prefix=f'bench_{self.tag}') for _ in range(2)]
        self.exchanges.append(f'bench_{self.tag}')
        try:
            for name, section in (('send', self.sequential_send), ('send', self.batched_send),
                                  ('drain', self.drain)):
                if name in self.only:
                    await section(broker)
            for name, bus_section in (('signals', self.signals), ('groups', self.grouped_signals),
                                      ('groups', self.grouped_drain), ('rpc', self.rpc)):
                if name in self.only:
                    await bus_section(*buses)
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
            await self.peer.close()

    def print(self) -> None:
        print_table(f'microagent on RabbitMQ vs raw aiormq {version("aiormq")}: {self.n} messages and '
                    f'{self.calls} calls per round, {self.rounds} alternating rounds', self.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dsn', default='amqp://guest:guest@127.0.0.1:5672/')
    parser.add_argument('--messages', type=int, default=scaled(1000))
    parser.add_argument('--calls', type=int, default=scaled(200))
    parser.add_argument('--retained', type=int, default=scaled(10_000), help='signals a group drains')
    parser.add_argument('--rounds', type=int, default=ROUNDS)
    parser.add_argument('--only', default=','.join(sorted(SECTIONS)), help='sections to run, comma-separated')
    args = parser.parse_args()
    only = frozenset(args.only.split(','))
    if only - SECTIONS:
        parser.error(f'unknown sections {sorted(only - SECTIONS)}; choose among {sorted(SECTIONS)}')
    bench = Bench(args.dsn, args.messages, args.calls, args.rounds, args.retained, only)
    asyncio.run(bench.run())
    bench.print()


if __name__ == '__main__':
    main()
