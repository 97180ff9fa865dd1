"""Redis priority levels: level 0 is the queue's list (where 1.x producers push), level n the list
``Q:p{n}``; fetches take the highest level first; a consumer blocked on the queue wakes at once for
a higher level (a marker in ``Q``, never counted nor handed out); a release and a reclaim put a
message back at its level."""
from __future__ import annotations

import asyncio
import json

import msgspec
import pytest
from redis.asyncio import Redis

from microagent import MicroAgent, Queue, consumer
from microagent.backends.redis import RedisBroker
from microagent.backends.redis.keys import WAKE_MARKER
from tests.conformance.backends import REDIS_TEST_DSN, drop_queues
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.redis


class Job(msgspec.Struct, frozen=True):
    job_id: int


async def test_levels_are_lists_beside_the_queue_and_a_1x_producer_is_level_0(raw: Redis, unique: str) -> None:
    queue = Queue(f'rprio_{unique}', Job, priorities=3)
    broker = RedisBroker(REDIS_TEST_DSN)
    try:
        await raw.rpush(queue.name, json.dumps({'job_id': 1}))  # a 1.x producer: the list itself
        await broker[queue].send(Job(2), priority=2)
        await broker[queue].send(Job(3), priority=1, delay=0.05)
        assert await raw.llen(queue.name) == 1
        assert await raw.llen(f'{queue.name}:p2') == 1
        await eventually(lambda: _length(broker, queue, 2))
        await asyncio.sleep(0.1)  # job 3 is due: moved to its level by the next fetch
        got = Collector()

        class Worker(MicroAgent):
            @consumer(queue, concurrency=1, prefetch=0)
            async def work(self, job: Job) -> None:
                got.add(job.job_id)

        async with Worker(broker=broker):
            await got.wait(3)
        assert got.items == [2, 3, 1]
    finally:
        await broker.close()
        await drop_queues(raw, [queue.name], False)


async def test_an_idle_consumer_wakes_at_once_for_a_higher_level(raw: Redis, unique: str) -> None:
    queue = Queue(f'rprio_wake_{unique}', Job, priorities=2)
    broker = RedisBroker(REDIS_TEST_DSN)
    broker.fetch_timeout = 10.0  # blocked on the list far longer than the test waits
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=1)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)

    try:
        async with Worker(broker=broker):
            await asyncio.sleep(0.3)  # the consumer blocks on the empty list
            await broker[queue].send(Job(1), priority=1)
            await got.wait(1, timeout=2.0)
            await broker[queue].send(Job(2), priority=1)
            await got.wait(2, timeout=2.0)
            assert await broker[queue].length() == 0  # a marker left behind is not a message
        assert got.items == [1, 2]
        assert await raw.lrange(queue.name, 0, -1) in ([], [WAKE_MARKER.encode()])
    finally:
        await broker.close()
        await drop_queues(raw, [queue.name], False)


async def test_a_release_and_a_reclaim_put_a_message_back_at_its_level(raw: Redis, unique: str) -> None:
    queue = Queue(f'rprio_back_{unique}', Job, priorities=3)
    broker = RedisBroker(REDIS_TEST_DSN)
    other = RedisBroker(REDIS_TEST_DSN)
    try:
        await broker[queue].send(Job(1), priority=2)
        await broker[queue].send(Job(2))
        transport = broker.transport
        [taken] = await transport.fetch(queue, 1, 1.0)
        assert msgspec.json.decode(taken.envelope.body) == {'job_id': 1}
        await transport.release(queue, [taken])
        assert await raw.llen(f'{queue.name}:p2') == 1
        [again] = await transport.fetch(queue, 1, 1.0)
        assert again.redelivered and again.attempt == 1
        await broker.close()  # gives back what it holds: a reclaim of its own in-flight list
        assert await raw.llen(f'{queue.name}:p2') == 1
        [last] = await other.transport.fetch(queue, 1, 1.0)
        assert msgspec.json.decode(last.envelope.body) == {'job_id': 1}
    finally:
        await broker.close()
        await other.close()
        await drop_queues(raw, [queue.name], False)


async def _length(broker: RedisBroker, queue: Queue[Job], count: int) -> bool:
    return await broker[queue].length() == count


async def test_a_level_0_message_that_woke_a_consumer_waits_for_the_higher_levels(raw: Redis, unique: str) -> None:
    queue = Queue(f'rprio_first_{unique}', Job, priorities=2)
    broker = RedisBroker(REDIS_TEST_DSN)
    try:
        await broker[queue].send(Job(1))
        await broker[queue].send(Job(2), priority=1)
        transport = broker.transport
        owned = await transport._register(queue.name)
        # what a blocked fetch's BLMOVE does when level 0 gets a message: then the fetch script runs
        moved = await raw.lmove(queue.name, owned.keys.inflight, 'LEFT', 'RIGHT')
        assert isinstance(moved, bytes)
        messages, _, _ = await transport._take(owned.keys, 10, len(moved))
        assert [msgspec.json.decode(m.partition(b'\n')[2] or m)['job_id'] for m in messages] == [2, 1]
        assert await raw.llen(owned.keys.inflight) == 2
    finally:
        await broker.close()
        await drop_queues(raw, [queue.name], False)
