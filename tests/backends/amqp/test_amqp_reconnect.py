"""RabbitMQ closing the connections (as on a restart): publishers and consumers come back by
themselves, with backoff, and a message that was being handled at the break is delivered again."""
from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

import aiormq
import msgspec
import pytest

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.backends.amqp import AMQPBroker
from tests.amqp_support import Servers, break_connections
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.amqp


class Job(msgspec.Struct, frozen=True):
    job_id: int


async def test_consumer_and_publisher_survive_a_broken_connection_and_lose_nothing(
        amqp: Servers, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    queue = Queue(f'survivor_{unique}', Job)
    handled = Collector()
    in_flight = Collector()
    release = asyncio.Event()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=5)
        async def work(self, job: Job) -> None:
            if len(in_flight.items) < 5:
                in_flight.add(job.job_id)
                await release.wait()  # these five are unacked when the connection breaks
            handled.add(job.job_id)

    consumer_broker, producer = amqp.broker(), amqp.broker()
    await producer[queue].send_many([Job(job_id=i) for i in range(50)])
    with caplog.at_level(logging.INFO, logger='microagent'):
        async with Worker(broker=consumer_broker):
            held = set(await in_flight.wait(5))
            assert await break_connections(consumer_broker.uid[:8]) == 1
            assert await break_connections(producer.uid[:8]) == 1
            release.set()  # their acks find a dead channel: RabbitMQ must deliver them again
            await producer[queue].send_many([Job(job_id=i) for i in range(50, 60)])  # reconnects to send
            await eventually(lambda: _all_handled(handled, 60), timeout=20)
            await eventually(lambda: _empty(consumer_broker, queue))
    assert set(handled.items) == set(range(60))
    redelivered = [i for i in held if handled.items.count(i) == 2]
    assert redelivered == sorted(held)  # handled before the break (ack lost) and again after it
    assert 'lost the connection to RabbitMQ' in caplog.text
    assert f'Queue {queue.name}: consuming again' in caplog.text
    assert await consumer_broker[queue].dead_letter_count() == 0


async def _all_handled(handled: Collector, count: int) -> bool:
    return set(handled.items) >= set(range(count))


async def _empty(broker: AMQPBroker, queue: Queue[Job]) -> bool:
    return await broker[queue].length() == 0


async def test_a_batch_sent_across_a_break_arrives_whole(amqp: Servers, unique: str) -> None:
    queue = Queue(f'batch_break_{unique}', Job)
    producer = amqp.broker()
    await producer[queue].declare()
    count = 10_000  # long enough a batch for the break to land in the middle of it
    sending = asyncio.create_task(producer[queue].send_many([Job(job_id=i) for i in range(count)]))
    assert await break_connections(producer.uid[:8]) == 1
    await sending  # what the break left unconfirmed was sent again
    channel = await amqp.raw()
    received: set[int] = set()
    done = asyncio.Event()

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        received.add(msgspec.json.decode(message.body, type=Job).job_id)
        if len(received) == count:
            done.set()

    await channel.basic_consume(queue.name, on_message, no_ack=True)
    async with asyncio.timeout(20):
        await done.wait()
    assert received == set(range(count))


async def test_receivers_subscribe_again_after_a_broken_connection(
        amqp: Servers, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    signal = Signal(f'beacon_{unique}', Job)
    got = Collector()

    class Listener(MicroAgent):
        @receiver(signal)
        async def on_beacon(self, job: Job) -> None:
            got.add(job.job_id)

    listener_bus, sender_bus = amqp.bus(), amqp.bus()
    with caplog.at_level(logging.INFO, logger='microagent'):
        async with Listener(bus=listener_bus):
            await sender_bus[signal].send('test', Job(job_id=0))
            await got.wait(1)
            assert await break_connections(listener_bus.uid[:8]) == 1
            assert await break_connections(sender_bus.uid[:8]) == 1
            # signals sent while the bus queue is being set up again are lost (pub/sub); poll
            beacon = 0

            async def heard() -> bool:
                nonlocal beacon
                beacon += 1
                await sender_bus[signal].send('test', Job(job_id=beacon))
                return len(got.items) > 1
            await eventually(heard, timeout=20, every=0.05)
    assert 'subscribed again to 1 signal(s)' in caplog.text


async def test_an_unreachable_server_is_retried_with_growing_delays(caplog: pytest.LogCaptureFixture) -> None:
    broker = AMQPBroker('amqp://guest:guest@127.0.0.1:1/', reconnect_timeout=2)
    queue = Queue(f'nowhere_{broker.uid}', Job)
    with caplog.at_level(logging.WARNING, logger='microagent'), pytest.raises(ConnectionError, match='unreachable'):
        await broker[queue].send(Job(job_id=1))
    await broker.close()
    delays = [float(m) for m in re.findall(r'next in ([\d.]+)s', caplog.text)]
    assert 2 <= len(delays) <= 5  # one log line per attempt, no tight loop
    assert delays == sorted(delays) and delays[1] == 2 * delays[0]


async def test_a_declaration_interrupted_by_a_broken_connection_is_done_again(
        amqp: Servers, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server closes the connection while a queue is being declared (the control channel looked
    open a moment before): the send declares it again on a new connection instead of failing."""
    queue = Queue(f'redeclared_{unique}', Job)
    broker = amqp.broker()
    transport = broker.transport
    declare_on = transport._declare_on
    broken: list[bool] = []

    async def break_first(queue: Queue[Job], channel: aiormq.abc.AbstractChannel) -> None:
        if not broken:
            broken.append(True)
            assert await break_connections(broker.uid[:8]) == 1
            await eventually(_closed(channel))  # the declaration below now meets a closed connection
        await declare_on(queue, channel)

    monkeypatch.setattr(transport, '_declare_on', break_first)
    await broker[queue].send(Job(job_id=1))
    assert broken and await broker[queue].length() == 1


def _closed(channel: aiormq.abc.AbstractChannel) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return channel.is_closed
    return check
