"""The envelope on Redis: frames by default, bare 1.x bodies with ``wire='1.x'``, both read always;
headers kept across retries, dead letters and requeues; attempts counted per message."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import msgspec
import pytest
from redis.asyncio import Redis

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.backends.redis import RedisBroker, RedisSignalBus
from microagent.backends.redis.frame import FRAME_MAGIC
from microagent.message import Message
from tests.conformance.backends import REDIS_TEST_DSN
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.redis


class Job(msgspec.Struct, frozen=True):
    job_id: int


@pytest.fixture
async def brokers() -> AsyncIterator[list[RedisBroker]]:
    opened: list[RedisBroker] = []
    yield opened
    for broker in opened:
        await broker.close()


@pytest.fixture
async def queue_name(raw: Redis, unique: str) -> AsyncIterator[str]:
    name = f'env_{unique}'
    yield name
    await raw.delete(name)
    async for key in raw.scan_iter(match=f'{name}:*'):
        await raw.delete(key)


async def _dead_letters_are(broker: RedisBroker, queue: Queue[Any], count: int) -> bool:
    return bool(await broker[queue].dead_letter_count() == count)


# queues


async def test_a_consumer_reads_frames_and_bare_1x_bodies(
        raw: Redis, queue_name: str, brokers: list[RedisBroker]) -> None:
    queue = Queue(queue_name, Job)
    framed, legacy = RedisBroker(REDIS_TEST_DSN), RedisBroker(REDIS_TEST_DSN, wire='1.x')
    brokers += [framed, legacy]
    await framed[queue].send(Job(1), headers={'tenant': 'acme'})
    await legacy[queue].send(Job(2), headers={'tenant': 'lost'})  # the 1.x wire has no headers
    await raw.rpush(queue_name, b'{"job_id": 3}')  # a 1.x producer
    stored = cast(list[bytes], await raw.lrange(queue_name, 0, -1))
    assert stored[0].startswith(FRAME_MAGIC) and stored[1:] == [b'{"job_id":2}', b'{"job_id": 3}']
    seen = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job, *, message: Message) -> None:
            seen.add((job.job_id, dict(message.headers), message.message_id))

    consuming = RedisBroker(REDIS_TEST_DSN)
    brokers.append(consuming)
    async with Worker(broker=consuming):
        got = sorted(await seen.wait(3))
    assert [(job_id, headers) for job_id, headers, _ in got] == [(1, {'tenant': 'acme'}), (2, {}), (3, {})]
    assert len({message_id for _, _, message_id in got}) == 3


async def test_a_retry_keeps_the_frame_headers_and_message_id(
        queue_name: str, brokers: list[RedisBroker]) -> None:
    queue = Queue(queue_name, Job)
    seen = Collector()

    class Flaky(MicroAgent):
        @consumer(queue, max_retries=1, retry_delay=0.05)
        async def work(self, job: Job, *, message: Message) -> None:
            seen.add(message)
            if message.attempt == 1:
                raise RuntimeError('first attempt fails')

    broker = RedisBroker(REDIS_TEST_DSN)
    brokers.append(broker)
    async with Flaky(broker=broker):
        await broker[queue].send(Job(1), headers={'tenant': 'acme'})
        first, second = await seen.wait(2)
    assert (first.attempt, second.attempt) == (1, 2)
    assert (second.message_id, second.correlation_id) == (first.message_id, first.correlation_id)
    assert second.traceparent == first.traceparent and dict(second.headers) == {'tenant': 'acme'}


async def test_a_dead_letter_keeps_its_headers_and_a_requeue_keeps_the_message_id(
        raw: Redis, queue_name: str, brokers: list[RedisBroker]) -> None:
    queue = Queue(queue_name, Job)
    seen = Collector()
    failing = True

    class Worker(MicroAgent):
        @consumer(queue, max_retries=0)
        async def work(self, job: Job, *, message: Message) -> None:
            seen.add(message)
            if failing:
                raise RuntimeError('not now')

    broker = RedisBroker(REDIS_TEST_DSN)
    brokers.append(broker)
    async with Worker(broker=broker):
        await broker[queue].send(Job(1), headers={'tenant': 'acme'})
        (sent,) = await seen.wait(1)
        await eventually(lambda: _dead_letters_are(broker, queue, 1))
    (letter,) = await broker[queue].dead_letters()
    assert (letter.body, letter.reason, letter.attempts) == (b'{"job_id":1}', 'RuntimeError: not now', 1)
    assert letter.envelope.headers is not None
    assert (letter.envelope.headers['message-id'], letter.envelope.headers['tenant']) == (sent.message_id, 'acme')

    failing = False
    assert await broker[queue].requeue_dead_letters() == 1
    async with Worker(broker=broker):
        _, again = await seen.wait(2)
    assert (again.message_id, again.attempt, dict(again.headers)) == (sent.message_id, 1, {'tenant': 'acme'})


async def test_identical_payloads_count_their_attempts_apart(queue_name: str, brokers: list[RedisBroker]) -> None:
    """Two equal payloads failing together: each is on its own attempt 2, then dead-lettered once
    (with one count per body, the second retry would read attempt 3 and skip a try)."""
    queue = Queue(queue_name, Job)
    attempts = Collector()

    class Failing(MicroAgent):
        @consumer(queue, max_retries=1, retry_delay=0.05, concurrency=2)
        async def work(self, job: Job, *, message: Message) -> None:
            attempts.add((message.message_id, message.attempt))
            raise RuntimeError('never')

    broker = RedisBroker(REDIS_TEST_DSN)
    brokers.append(broker)
    async with Failing(broker=broker):
        await broker[queue].send_many([Job(1), Job(1)])
        await eventually(lambda: _dead_letters_are(broker, queue, 2))
    seen = attempts.items
    assert len(seen) == 4 and sorted(attempt for _, attempt in seen) == [1, 1, 2, 2]
    assert {message_id for message_id, _ in seen} == {message_id for message_id, attempt in seen if attempt == 2}


async def test_a_malformed_frame_is_dead_lettered_naming_the_queue(
        raw: Redis, queue_name: str, brokers: list[RedisBroker]) -> None:
    queue = Queue(queue_name, Job)
    seen = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            seen.add(job.job_id)

    broker = RedisBroker(REDIS_TEST_DSN)
    brokers.append(broker)
    truncated = FRAME_MAGIC + b'{"message-id":"m1"'  # no end of the header line
    await raw.rpush(queue_name, truncated, b'{"job_id":2}')
    async with Worker(broker=broker):
        assert await seen.wait(1) == [2]
        await eventually(lambda: _dead_letters_are(broker, queue, 1))
    (letter,) = await broker[queue].dead_letters()
    assert letter.body == truncated and letter.envelope.headers is None
    assert f"queue '{queue_name}'" in letter.reason and 'end of its header line' in letter.reason


async def test_a_released_message_comes_back_redelivered_on_the_same_attempt(
        raw: Redis, queue_name: str, brokers: list[RedisBroker]) -> None:
    queue = Queue(queue_name, Job)
    broker = RedisBroker(REDIS_TEST_DSN)
    brokers.append(broker)
    transport = broker.transport
    await broker[queue].send(Job(1))
    (first,) = await transport.fetch(queue, 1, 1.0)
    assert (first.attempt, first.redelivered) == (1, False)
    await transport.release(queue, [first])
    (again,) = await transport.fetch(queue, 1, 1.0)
    assert (again.attempt, again.redelivered) == (1, True)
    assert again.envelope == first.envelope
    await transport.ack(queue, again)
    await eventually(lambda: _empty(raw, f'{queue_name}:attempts'))  # the mark goes with the message


async def _empty(client: Redis, key: str) -> bool:
    return not await client.exists(key)


# signals


async def test_a_receiver_reads_frames_and_bare_1x_bodies(raw: Redis, unique: str) -> None:
    signal = Signal(f'both_{unique}', Job)
    seen = Collector()

    class Listener(MicroAgent):
        @receiver(signal)
        async def on_job(self, job: Job, *, sender: str, message: Message) -> None:
            seen.add((job.job_id, sender, dict(message.headers)))

    prefix = f'T{unique}'
    framed = RedisSignalBus(REDIS_TEST_DSN, prefix=prefix)
    legacy = RedisSignalBus(REDIS_TEST_DSN, prefix=prefix, wire='1.x')
    listening = RedisSignalBus(REDIS_TEST_DSN, prefix=prefix)
    pubsub = raw.pubsub()
    await pubsub.psubscribe(f'{prefix}:{signal.name}:*')
    try:
        async with Listener(bus=listening):
            await framed[signal].send('new', Job(1), headers={'tenant': 'acme'})
            await legacy[signal].send('old', Job(2))
            await raw.publish(f'{prefix}:{signal.name}:raw', b'{"job_id": 3}')  # a 1.x agent
            got = sorted(await seen.wait(3))
        wire = [await _next_data(pubsub) for _ in range(2)]
    finally:
        await pubsub.aclose()
        for bus in (framed, legacy, listening):
            await bus.close()
    assert got == [(1, 'new', {'tenant': 'acme'}), (2, 'old', {}), (3, 'raw', {})]
    assert wire[0].startswith(FRAME_MAGIC) and wire[1] == b'{"job_id":2}'


async def _next_data(pubsub: Any) -> bytes:
    async with asyncio.timeout(5):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is not None:
                return bytes(message['data'])
