"""NATS under faults, on a private nats-server: a consumer killed with ``kill -9`` loses nothing,
and a server restarted under a running agent loses nothing it acknowledged; delivery and
subscriptions resume by themselves."""
from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import pytest

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.backends.nats import NATSBroker, NATSSignalBus
from microagent.message import Message
from tests.helpers import Collector, eventually
from tests.nats_support import PrivateNATS, private_nats

pytestmark = pytest.mark.nats

SLOW_CONSUMER = '''
import asyncio, sys
from microagent import MicroAgent, Queue, consumer
from microagent.backends.nats import NATSBroker

queue = Queue(sys.argv[2])

class Slow(MicroAgent):
    @consumer(queue, concurrency=3, prefetch=2)
    async def work(self, **job: int) -> None:
        print(job['n'], flush=True)
        await asyncio.Event().wait()  # never done: killed while holding its messages

async def main() -> None:
    async with Slow(broker=NATSBroker(sys.argv[1], ack_wait=1.0)):
        await asyncio.Event().wait()

asyncio.run(main())
'''


@pytest.fixture
async def server() -> AsyncIterator[PrivateNATS]:
    async with private_nats() as private:
        await private.start()
        yield private


async def test_a_consumer_killed_mid_batch_loses_nothing(server: PrivateNATS, unique: str) -> None:
    queue = Queue(f'killed_{unique}')
    broker = NATSBroker(server.dsn, ack_wait=1.0)
    try:
        await broker[queue].send_many([{'n': n} for n in range(10)])
        child = await asyncio.create_subprocess_exec(sys.executable, '-c', SLOW_CONSUMER, server.dsn, queue.name,
                                                     stdout=asyncio.subprocess.PIPE)
        assert child.stdout is not None
        taken = [int(await asyncio.wait_for(child.stdout.readline(), 20)) for _ in range(3)]
        child.send_signal(signal.SIGKILL)
        await child.wait()
        got: dict[int, Message] = {}
        done = asyncio.Event()

        class Worker(MicroAgent):
            @consumer(queue, concurrency=5)
            async def work(self, message: Message, **job: int) -> None:
                got[job['n']] = message
                if len(got) == 10:
                    done.set()

        async with Worker(broker=broker):
            await asyncio.wait_for(done.wait(), 15)
        assert sorted(got) == list(range(10))
        assert all(got[n].redelivered for n in taken)  # it may have been partly handled: the handler is told
        assert await broker[queue].length() == 0
    finally:
        await broker.close()


async def test_delivery_resumes_after_the_server_restarts_and_nothing_acknowledged_is_lost(
        server: PrivateNATS, unique: str) -> None:
    queue = Queue(f'restart_{unique}')
    ping = Signal(f'ping_{unique}')
    jobs, signals = Collector(), Collector()
    gate = asyncio.Event()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=2)
        async def work(self, **job: int) -> None:
            await gate.wait()
            jobs.add(job['n'])

        @receiver(ping)
        async def pinged(self, **payload: int) -> None:
            signals.add(payload['n'])

    producer = NATSBroker(server.dsn)
    bus = NATSSignalBus(server.dsn, prefix=f'T{unique}')
    sender = NATSSignalBus(server.dsn, prefix=f'T{unique}')
    try:
        async with Worker(broker=NATSBroker(server.dsn, ack_wait=2.0), bus=bus):
            await producer[queue].send_many([{'n': n} for n in range(20)])  # acknowledged by the server
            await sender[ping].send('test', n=1)
            assert await signals.wait(1) == [1]
            await server.stop()  # handlers are holding messages, the rest waits on the server
            gate.set()
            await server.start()
            await producer[queue].send_many([{'n': n} for n in range(20, 25)])
            await eventually(lambda: _all_seen(jobs, 25), timeout=30)

            async def signalled() -> bool:  # the bus subscribed again by itself
                await sender[ping].send('test', n=2)
                return 2 in signals.items
            await eventually(signalled, timeout=10, every=0.2)
        assert set(jobs.items) == set(range(25))  # redeliveries allowed (at least once), losses not
    finally:
        for item in (producer, sender):
            await item.close()


async def _all_seen(jobs: Collector, count: int) -> bool:
    return len(set(jobs.items)) >= count
