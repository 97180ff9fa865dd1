"""NATS priority levels: a stream per level above 0 (``MQ-q-p{k}`` on ``mq.q.p{k}``), the level in
``x-priority`` (never shown to handlers as a header), a plain producer publishing to a level's
subject, and an idle consumer, waiting on every level, taking a higher level's message as it comes."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import nats
import pytest

from microagent import Message, MicroAgent, Queue, consumer
from microagent.backends.nats import NATSBroker
from microagent.backends.nats.layout import Layout
from tests.conformance.backends import delete_nats_streams
from tests.helpers import Collector
from tests.services import NATS_DSN

pytestmark = pytest.mark.nats


class Job(msgspec.Struct, frozen=True):
    job_id: int


@pytest.fixture
async def broker() -> AsyncIterator[NATSBroker]:
    made = NATSBroker(NATS_DSN)
    yield made
    await made.close()
    await delete_nats_streams([made])


async def test_a_level_is_a_stream_and_its_mark_is_no_user_header(broker: NATSBroker, unique: str) -> None:
    queue = Queue(f'nprio_{unique}', Job, priorities=3)
    layout = Layout.of(queue.name)
    await broker[queue].send(Job(1), priority=2, headers={'tenant': 'acme'})
    client = await nats.connect(NATS_DSN)
    try:
        js = client.jetstream()
        stored = await js.get_msg(layout.level_stream(2), seq=1)
        assert stored.subject == layout.level_subject(2) == f'{layout.subject}.p2'
        assert stored.headers is not None and stored.headers['x-priority'] == '2'
        await js.publish(layout.level_subject(1), b'{"job_id": 2}', headers={'x-priority': '1'})  # a plain producer
    finally:
        await client.close()
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=1)
        async def work(self, job: Job, message: Message) -> None:
            got.add((job.job_id, dict(message.headers)))

    async with Worker(broker=broker):
        await got.wait(2)
        assert got.items == [(1, {'tenant': 'acme'}), (2, {})]
        await asyncio.sleep(0.3)  # the consumer is idle: it waits on every level
        await broker[queue].send(Job(3), priority=1)
        await got.wait(3, timeout=1.0)


async def test_what_a_level_brings_after_another_level_answered_is_taken(broker: NATSBroker, unique: str) -> None:
    """An idle consumer waits on every level; level 0 answers first, so the waits on levels 1 and 2
    end while their requests stay on the server: a message they bring then is in hand here (the
    server counts it as delivered, not pending) and the next fetch takes it, not ack_wait later."""
    queue = Queue(f'nprio_late_{unique}', Job, priorities=3)
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=1)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)

    async with Worker(broker=broker):
        await asyncio.sleep(0.2)  # idle: waiting on every level
        for n in range(5):
            await broker[queue].send(Job(n * 10))
            await got.wait(2 * n + 1)
            await broker[queue].send(Job(n * 10 + 1), priority=1 + n % 2)
            await got.wait(2 * n + 2, timeout=3.0)  # within the queue's ack_wait (30 s) by far
    assert got.items == [value for n in range(5) for value in (n * 10, n * 10 + 1)]
