"""microagent's NATS backend against raw nats-py doing the same work on the same server, in one run.

    python -m benchmarks.bench_nats [--messages 1000] [--calls 200] [--rounds 5] [--dsn nats://...]

Queues: both sides publish JSON to a JetStream work-queue stream and wait for each acknowledgement
(a batch: all sent, then every acknowledgement awaited), and drain a durable pull consumer in
batches of 32, acking each message after decoding it into the same msgspec model. Signals: core
NATS publish to a subscriber. Signal groups: a grouped signal sent one by one (the bus awaits the
stream's acknowledgement of its group copy) and handled by a member, against a JetStream publish
awaiting its ack and a pull consumer fetching and acking; and a drain of ``--retained`` signals kept
while the group had no member, against a pull consumer draining the same from a limits stream.
RPC: a NATS request to one responder, answered on the reply subject. A ratio above 1 means faster
than raw; below 1 is the price of microagent's validation, delivery bookkeeping and handler calling.
microagent also sends every message's headers (ids, time, trace) as NATS headers, which the raw side
does not: the indented row under the signal one measures what those headers cost raw nats-py and the
server alone.
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

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, RetentionPolicy

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.backends.nats import NATSBroker, NATSSignalBus
from microagent.backends.nats.groupindex import GroupLayout, group_streams
from microagent.message import new_headers

from .harness import ROUNDS, Row, Side, alternate, latency_rows, median, print_table, rate_row, scaled

BATCH = 32
SEND_TARGET, SIGNAL_TARGET, SIGNAL_HEADERS_TARGET, DRAIN_TARGET = 0.9, 0.6, 0.85, 0.9
GROUP_TARGET = 0.8  # issue #21's goal for grouped signals


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

    def restart(self) -> None:
        self.count = 0
        self.done.clear()


async def timed(action: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


class Bench:
    def __init__(self, dsn: str, messages: int, calls: int, rounds: int, retained: int = 20_000) -> None:
        self.dsn = dsn
        self.n = messages
        self.retained = retained
        self.groups = True
        self.calls = calls
        self.rounds = rounds
        self.tag = uuid.uuid4().hex[:8]
        self.streams: list[str] = []
        self.rows: list[Row] = []
        self._raw: Client | None = None

    @property
    def raw(self) -> Client:
        assert self._raw is not None
        return self._raw

    def queue(self, label: str) -> Queue[Job]:
        return Queue(f'bench_{label}_{self.tag}', Job)

    async def raw_stream(self, label: str) -> str:
        """A work-queue stream for the raw side, with a durable pull consumer; its subject."""
        name, subject = f'BENCHRAW-{label}-{self.tag}', f'benchraw.{label}.{self.tag}'
        js = self.raw.jetstream()
        await js.add_stream(name=name, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE)
        await js.add_consumer(name, ConsumerConfig(durable_name='raw', ack_policy=AckPolicy.EXPLICIT))
        self.streams.append(name)
        return subject

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

    async def sequential_send(self, broker: NATSBroker) -> None:
        bound = broker[self.queue('seq')]
        await bound.declare()
        subject = await self.raw_stream('seq')
        js = self.raw.jetstream()

        async def ours() -> None:
            for i in range(self.n):
                await bound.send(Job(job_id=i))

        async def raw() -> None:
            for i in range(self.n):
                await js.publish(subject, _encode(Job(job_id=i)))

        async def raw_headers() -> None:
            """The raw side with the headers microagent sends, ``Nats-Msg-Id`` (deduplication) included."""
            for i in range(self.n):
                headers = dict(new_headers())
                headers['Nats-Msg-Id'] = headers['message-id']
                await js.publish(subject, _encode(Job(job_id=i)), headers=headers)

        await self.compare('sequential send (JetStream ack)', Side(ours), Side(raw),
                           ('  raw with our headers and Nats-Msg-Id', Side(raw_headers)),
                           target=SEND_TARGET)

    async def batched_send(self, broker: NATSBroker) -> None:
        bound = broker[self.queue('batch')]
        await bound.declare()
        subject = await self.raw_stream('batch')
        js = self.raw.jetstream()
        jobs = [Job(job_id=i) for i in range(self.n)]

        async def raw() -> None:
            await asyncio.gather(*(js.publish(subject, _encode(job)) for job in jobs))

        await self.compare('batched send (send_many)', Side(partial(bound.send_many, jobs)),
                           Side(raw), target=SEND_TARGET)

    async def drain(self, broker: NATSBroker) -> None:
        ours_q = self.queue('drain')
        subject = await self.raw_stream('drain')
        js = self.raw.jetstream()
        jobs = [Job(job_id=i) for i in range(self.n)]
        ours_done = Counter(self.n)

        class Worker(MicroAgent):
            @consumer(ours_q, concurrency=BATCH)
            async def work(self, job: Job) -> None:
                ours_done.hit()

        agent = Worker(broker=broker)

        async def fill() -> None:
            nonlocal agent
            await broker[ours_q].send_many(jobs)
            ours_done.restart()
            agent = Worker(broker=broker)

        async def ours() -> None:
            await agent._start()
            await ours_done.done.wait()

        async def stop() -> None:
            await agent.stop()

        pull = await js.pull_subscribe_bind('raw', f'BENCHRAW-drain-{self.tag}')

        async def fill_raw() -> None:
            await asyncio.gather(*(js.publish(subject, _encode(job)) for job in jobs))

        async def raw() -> None:
            left = self.n
            while left:
                for msg in await pull.fetch(batch=min(BATCH, left), timeout=5):
                    _decode_job(msg.data)
                    await msg.ack()
                    left -= 1

        await self.compare(f'drain {self.n} with acks (pull batches of {BATCH})', Side(ours, fill, stop),
                           Side(raw, fill_raw), target=DRAIN_TARGET)

    # bus

    async def signals(self, sender: NATSSignalBus, listener: NATSSignalBus) -> None:
        signal = Signal(f'bench_signal_{self.tag}', Job)
        counter = Counter(self.n)

        class Listener(MicroAgent):
            @receiver(signal)
            async def on_job(self, job: Job) -> None:
                counter.hit()

        async def ours() -> None:
            counter.restart()
            for i in range(self.n):
                await sender[signal].send('bench', Job(job_id=i))
            await counter.done.wait()

        subject = f'benchraw.signal.{self.tag}'
        listening = await nats.connect(self.dsn)

        async def on_message(msg: Msg) -> None:
            _decode_job(msg.data)
            counter.hit()

        await listening.subscribe(f'{subject}.>', cb=on_message)
        await listening.flush()

        async def raw() -> None:
            counter.restart()
            for i in range(self.n):
                await self.raw.publish(f'{subject}.bench', _encode(Job(job_id=i)))
            await counter.done.wait()

        async def raw_headers() -> None:
            counter.restart()
            for i in range(self.n):
                await self.raw.publish(f'{subject}.bench', _encode(Job(job_id=i)), headers=dict(new_headers()))
            await counter.done.wait()

        try:
            async with Listener(bus=listener):
                await listener.transport.ping()
                sides = Side(ours), Side(raw), Side(raw_headers)
                await self.compare('signal publish-to-receive (core)', *sides[:2],
                                   ('  raw with our headers (NATS headers)', sides[2]), target=SIGNAL_TARGET)
                self.rows.append(rate_row('  ours vs raw with our headers', self.n, sides[0], sides[2],
                                          target=SIGNAL_HEADERS_TARGET))
        finally:
            await listening.close()

    # signal groups

    async def raw_group_stream(self, label: str) -> tuple[str, JetStreamContext.PullSubscription]:
        """A limits stream for the raw side, as a group's (max_msgs, discard old), with a durable pull
        consumer; its subject and the consumer's pull subscription."""
        name, subject = f'BENCHRAW-{label}-{self.tag}', f'benchraw.{label}.{self.tag}'
        js = self.raw.jetstream()
        await js.add_stream(name=name, subjects=[subject], retention=RetentionPolicy.LIMITS, max_msgs=100_000,
                            discard=DiscardPolicy.OLD)
        await js.add_consumer(name, ConsumerConfig(durable_name='raw', ack_policy=AckPolicy.EXPLICIT,
                                                   deliver_policy=DeliverPolicy.NEW, filter_subject=subject))
        self.streams.append(name)
        return subject, await js.pull_subscribe_bind('raw', name)

    async def _knows(self, sender: NATSSignalBus, signal: Signal[Any, Any]) -> None:
        """Until the sender has learnt that the signal has a group (the stream advisory)."""
        stream = GroupLayout.of(sender.prefix, signal.name, 'bench').stream
        await sender.transport.groups_index.learn(await sender.transport.link.client())
        while stream not in sender.transport.groups_index.streams:  # noqa: ASYNC110 - an advisory to come
            await asyncio.sleep(0.01)

    async def grouped(self, sender: NATSSignalBus, member: NATSSignalBus) -> None:
        """A grouped signal sent one by one (each acknowledged by the stream) and handled by a group
        member; raw: a JetStream publish awaiting its ack, a pull consumer fetching and acking."""
        signal = Signal(f'bench_group_{self.tag}', Job)
        counter = Counter(self.n)

        class Member(MicroAgent):
            @receiver(signal, group='bench', concurrency=BATCH)
            async def on_job(self, job: Job) -> None:
                counter.hit()

        subject, pull = await self.raw_group_stream('group')
        js = self.raw.jetstream()

        async def ours() -> None:
            counter.restart()
            for i in range(self.n):
                await sender[signal].send('bench', Job(job_id=i))
            await counter.done.wait()

        async def consume() -> None:
            while True:
                try:
                    msgs = await pull.fetch(batch=BATCH, timeout=1)
                except TimeoutError:
                    continue
                for msg in msgs:
                    _decode_job(msg.data)
                    await msg.ack()
                    counter.hit()

        async def raw() -> None:
            counter.restart()
            for i in range(self.n):
                await js.publish(subject, _encode(Job(job_id=i)))
            await counter.done.wait()

        consuming = asyncio.create_task(consume())
        try:
            async with Member(bus=member):
                await self._knows(sender, signal)
                await self.compare('grouped signal send -> handled (acked)', Side(ours), Side(raw),
                                   target=GROUP_TARGET)
        finally:
            consuming.cancel()
            await asyncio.gather(consuming, return_exceptions=True)

    async def grouped_drain(self, sender: NATSSignalBus, member: NATSSignalBus) -> None:
        """``retained`` signals kept for a group while its members were down, then drained by one
        member; raw: a pull consumer fetching batches and acking each."""
        n = self.retained
        signal = Signal(f'bench_gdrain_{self.tag}', Job)
        done = Counter(n)

        class Member(MicroAgent):
            @receiver(signal, group='bench', concurrency=BATCH)
            async def on_job(self, job: Job) -> None:
                done.hit()

        async with Member(bus=member):
            await self._knows(sender, signal)  # the group exists from now on
        subject, pull = await self.raw_group_stream('gdrain')
        js = self.raw.jetstream()
        chunk = 1000

        agents: list[MicroAgent] = []

        async def fill() -> None:
            for start in range(0, n, chunk):
                await asyncio.gather(*(sender[signal].send('bench', Job(job_id=i))
                                       for i in range(start, min(start + chunk, n))))
            done.restart()
            agents.append(Member(bus=member))

        async def ours() -> None:
            await agents[-1]._start()
            await done.done.wait()

        async def stop() -> None:
            await agents.pop().stop()

        async def fill_raw() -> None:
            for start in range(0, n, chunk):
                await asyncio.gather(*(js.publish(subject, _encode(Job(job_id=i)))
                                       for i in range(start, min(start + chunk, n))))

        async def raw() -> None:
            left = n
            while left:
                for msg in await pull.fetch(batch=min(BATCH, left), timeout=5):
                    _decode_job(msg.data)
                    await msg.ack()
                    left -= 1

        await self.compare(f'grouped drain of {n} retained signals', Side(ours, fill, stop), Side(raw, fill_raw),
                           target=GROUP_TARGET, count=n)

    async def rpc(self, caller: NATSSignalBus, answerer: NATSSignalBus) -> None:
        signal = Signal(f'bench_rpc_{self.tag}', Job, returns=int)

        class Answerer(MicroAgent):
            @receiver(signal)
            async def answer(self, job: Job) -> int:
                return job.job_id

        async def ours_call(i: int) -> None:
            await caller[signal].call('bench', Job(job_id=i), timeout=10)

        subject = f'benchraw.rpc.{self.tag}'
        server = await nats.connect(self.dsn)

        async def serve(msg: Msg) -> None:
            await msg.respond(_encode({'Raw.answer': _decode_job(msg.data).job_id}))

        await server.subscribe(subject, cb=serve)
        await server.flush()

        async def raw_call(i: int) -> None:
            answer = await self.raw.request(subject, _encode(Job(job_id=i)), timeout=10)
            msgspec.json.decode(answer.data, type=dict[str, int])

        try:
            async with Answerer(bus=answerer):
                await self.latencies('RPC round trip p50 (raw: nc.request)', ours_call, raw_call, 1 / 1.2)
        finally:
            await server.close()

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
        self._raw = await nats.connect(self.dsn)
        broker = NATSBroker(self.dsn)
        buses = [NATSSignalBus(self.dsn, prefix=f'bench_{self.tag}') for _ in range(2)]
        try:
            await self.sequential_send(broker)
            await self.batched_send(broker)
            await self.drain(broker)
            await self.signals(*buses)
            if self.groups:
                await self.grouped(*buses)
                await self.grouped_drain(*buses)
            await self.rpc(*buses)
        finally:
            created = set(broker.transport.created_streams)
            for bus in buses:
                created.update(await group_streams(self.raw, bus.prefix))
            await broker.close()
            for bus in buses:
                await bus.close()
            js = self.raw.jetstream()
            for name in [*self.streams, *created]:
                await js.delete_stream(name)
            await self.raw.close()

    def print(self) -> None:
        print_table(f'microagent on NATS vs raw nats-py {version("nats-py")}: {self.n} messages and '
                    f'{self.calls} calls per round, {self.rounds} alternating rounds', self.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dsn', default='nats://127.0.0.1:4222')
    parser.add_argument('--messages', type=int, default=scaled(1000))
    parser.add_argument('--calls', type=int, default=scaled(200))
    parser.add_argument('--rounds', type=int, default=ROUNDS)
    parser.add_argument('--retained', type=int, default=scaled(20_000), help='signals a group drains')
    parser.add_argument('--no-groups', action='store_true', help='skip the signal group rows')
    args = parser.parse_args()
    bench = Bench(args.dsn, args.messages, args.calls, args.rounds, args.retained)
    bench.groups = not args.no_groups
    asyncio.run(bench.run())
    bench.print()


if __name__ == '__main__':
    main()
