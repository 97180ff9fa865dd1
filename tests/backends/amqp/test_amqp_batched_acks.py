"""A work queue's acks sent in batches (``acks.SettledAcks``), on RabbitMQ: settled in any order,
with nacks and rejects between them, every message is acknowledged exactly as settled and the
channel is never closed for an unknown tag; a stuck handler holds back no other message's ack;
and what was handled before a graceful stop is not delivered again."""
from __future__ import annotations

import asyncio
import random

import aiormq
import msgspec
import pytest
from aiormq.abc import DeliveredMessage

from microagent import MicroAgent, Queue, consumer
from microagent.backends.amqp.acks import SettledAcks
from microagent.backends.amqp.settle import Token, settle
from tests.amqp_support import AMQP_DSN, Servers
from tests.helpers import Collector

pytestmark = pytest.mark.amqp


class Job(msgspec.Struct, frozen=True):
    job_id: int


@pytest.mark.parametrize('seed', range(6))
async def test_settled_in_any_order_every_message_is_settled_as_asked(unique: str, seed: int) -> None:
    """40 deliveries settled in a shuffled order, a few nacked back or rejected among the acks: the
    channel stays open (no multiple ack ever names a tag RabbitMQ already forgot), the acked ones
    are gone, and exactly the nacked ones come back."""
    order = random.Random(seed)
    connection = await aiormq.connect(AMQP_DSN)
    try:
        channel = await connection.channel()
        name = f'acks_{unique}_{seed}'
        await channel.queue_declare(name, auto_delete=False)
        for n in range(40):
            await channel.basic_publish(b'%d' % n, routing_key=name)
        await channel.basic_qos(prefetch_count=40)
        got: list[DeliveredMessage] = []
        all_in = asyncio.Event()

        async def on_message(message: DeliveredMessage) -> None:
            got.append(message)
            if len(got) == 40:
                all_in.set()

        consuming = await channel.basic_consume(name, on_message)
        await asyncio.wait_for(all_in.wait(), 10)
        acks = SettledAcks(channel, eager=order.choice([1, 4, 100]))
        tokens = [Token(channel, m.delivery_tag or 0, m.header.properties, acks=acks) for m in got]
        order.shuffle(tokens)
        nacked = set()
        for token in tokens:
            how = order.choice(['ack'] * 6 + ['nack', 'reject'])
            if how == 'nack':
                nacked.add(token.tag)
            await settle(token, how, requeue=how == 'nack')
            if order.random() < 0.2:
                await asyncio.sleep(0)  # let a window's ack go out now and then
        await acks.send_now()
        assert consuming.consumer_tag is not None
        await channel.basic_cancel(consuming.consumer_tag)
        assert not channel.is_closed
        await channel.close()
        check = await connection.channel()
        assert (await check.queue_declare(name, passive=True)).message_count == len(nacked)
        await check.queue_delete(name)
    finally:
        await connection.close()


async def test_a_stuck_handler_holds_back_no_other_ack(amqp: Servers, unique: str) -> None:
    """Prefetch 4: if the stuck message's missing ack held back the acks after it, RabbitMQ would
    stop delivering once 4 were unacknowledged; the other workers handle all 60."""
    queue = Queue(f'stuck_{unique}', Job)
    release = asyncio.Event()
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=4, prefetch=0, timeout=60)
        async def work(self, job: Job) -> None:
            if job.job_id == 0:
                await release.wait()
            got.add(job.job_id)

    broker = amqp.broker()
    async with Worker(broker=broker):
        await broker[queue].send_many([Job(n) for n in range(61)])
        assert sorted(await got.wait(60)) == list(range(1, 61))
        release.set()
        await got.wait(61)


async def test_what_was_handled_before_a_stop_is_not_delivered_again(amqp: Servers, unique: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SettledAcks, 'delay', 60.0)  # a window that ends only with the stop
    queue = Queue(f'stop_{unique}', Job)
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=40)  # acks go 10 at a time: the last 5 wait for the window
        async def work(self, job: Job) -> None:
            got.add(job.job_id)

    broker = amqp.broker()
    await broker[queue].send_many([Job(n) for n in range(205)])
    async with Worker(broker=broker):
        await got.wait(205)
    # the acks that waited for their window went out before the channel closed
    assert await broker[queue].length() == 0
    again = Collector()

    class Second(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            again.add(job.job_id)

    async with Second(broker=broker):
        await broker[queue].send(Job(-1))
        assert await again.wait(1) == [-1]  # the marker, and nothing handled before

