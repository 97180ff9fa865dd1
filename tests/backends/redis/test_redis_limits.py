"""Redis limits: fetches bounded by bytes (a batch of big messages stays under ``max_fetch_bytes``,
a message over ``max_message_size`` is dead-lettered at fetch, never handed to a consumer); a
malformed DSN refused when the bus or broker is built, naming the part that is wrong."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from microagent import MicroAgent, Queue, consumer
from microagent.backends.redis import RedisBroker, RedisSignalBus
from microagent.backends.redis.frame import frame
from microagent.errors import InvalidArgument
from microagent.transport import Delivery
from tests.conformance.backends import REDIS_TEST_DSN
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.redis

LIMIT = 2 * 1024 * 1024  # max_message_size of these tests
BOUND = 3 * 1024 * 1024  # max_fetch_bytes of these tests


class Blob(msgspec.Struct, frozen=True):
    n: int
    pad: str = ''


def body(n: int, size: int) -> bytes:
    """The JSON of a Blob of exactly ``size`` bytes (at least the bytes of its empty form)."""
    bare = len(msgspec.json.encode(Blob(n)))
    data = msgspec.json.encode(Blob(n, 'x' * max(0, size - bare)))
    assert len(data) == size or size < bare
    return data


@pytest.fixture
async def cleanup(raw: Redis) -> AsyncIterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        await raw.delete(name)
        async for key in raw.scan_iter(match=f'{name}:*'):
            await raw.delete(key)


class Recorded:
    """What the transport's fetch handed to the engine: the stored bytes of each batch."""

    def __init__(self, broker: RedisBroker) -> None:
        self.batches: list[list[int]] = []
        fetch = broker.transport.fetch

        async def recording(queue: Queue[Any], count: int, timeout: float) -> list[Delivery[bytes]]:
            deliveries = await fetch(queue, count, timeout)
            if deliveries:
                self.batches.append([len(d.token) for d in deliveries])
            return deliveries

        broker.transport.fetch = recording  # type: ignore[method-assign]


async def _run(broker: RedisBroker, queue: Queue[Blob], expected: int, started: asyncio.Event | None = None,
               ) -> list[int]:
    handled = Collector()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=50)
        async def work(self, blob: Blob) -> None:
            handled.add(blob.n)

    async with Worker(broker=broker):
        if started is not None:
            started.set()
        await handled.wait(expected, timeout=30)
    return sorted(handled.items)


async def test_big_batches_stay_under_the_byte_bound_and_oversized_messages_are_dead_lettered_unread(
        raw: Redis, unique: str, cleanup: list[str]) -> None:
    name = f'big_{unique}'
    cleanup.append(name)
    queue = Queue(name, Blob)
    over = {1: body(1, LIMIT + 1), 7: body(7, LIMIT + 5000), 13: body(13, 3 * LIMIT)}
    under = {4: body(4, LIMIT), 10: body(10, LIMIT - 1)}
    stored: list[bytes] = []
    for n in range(16):
        data = over.get(n) or under.get(n) or body(n, 100)
        # frames too: the limit is on the body, whatever its headers add (n=10, 13: framed)
        stored.append(frame(data, {'message-id': f'm{n}', 'user': 'h' * 500}) if n in (10, 13) else data)
    await raw.rpush(name, *stored)

    broker = RedisBroker(REDIS_TEST_DSN, max_message_size=LIMIT, max_fetch_bytes=BOUND)
    recorded = Recorded(broker)
    expected = [n for n in range(16) if n not in over]
    assert await _run(broker, queue, len(expected)) == expected  # the normal and just-under ones

    letters = await broker[queue].dead_letters()
    assert sorted(msgspec.json.decode(letter.envelope.body, type=Blob).n for letter in letters) == sorted(over)
    for letter in letters:
        size = len(over[msgspec.json.decode(letter.envelope.body, type=Blob).n])
        assert f'message of {size} bytes exceeds {LIMIT}' in letter.reason
        assert repr(name) in letter.reason and 'max_message_size' in letter.reason
    framed = next(letter for letter in letters if letter.envelope.headers)
    assert framed.envelope.headers is not None and framed.envelope.headers['message-id'] == 'm13'
    # nothing over the limit ever reached the consumer, no batch of several went over the bound
    fetched = [size for batch in recorded.batches for size in batch]
    assert max(fetched) < LIMIT + 1000
    assert all(sum(batch) <= BOUND for batch in recorded.batches if len(batch) > 1)
    assert await raw.llen(name) == 0


async def _blocked(raw: Redis) -> bool:
    return any(client.get('cmd') == 'blmove' for client in await raw.client_list())


async def test_an_oversized_message_arriving_on_an_empty_queue_is_dead_lettered(
        raw: Redis, unique: str, cleanup: list[str]) -> None:
    name = f'bigwait_{unique}'
    cleanup.append(name)
    queue = Queue(name, Blob)
    broker = RedisBroker(REDIS_TEST_DSN, max_message_size=LIMIT, max_fetch_bytes=BOUND)
    recorded = Recorded(broker)
    started = asyncio.Event()

    async def produce() -> None:  # once the consumer waits on the empty queue (BLMOVE)
        await started.wait()
        await eventually(lambda: _blocked(raw))
        await raw.rpush(name, body(1, LIMIT + 1))
        await raw.rpush(name, body(2, 100))

    producing = asyncio.create_task(produce())
    assert await _run(broker, queue, 1, started) == [2]
    await producing
    (letter,) = await broker[queue].dead_letters()
    assert f'message of {LIMIT + 1} bytes exceeds {LIMIT}' in letter.reason
    assert all(size <= LIMIT for batch in recorded.batches for size in batch)


@pytest.mark.parametrize('option', ['max_fetch_bytes', 'max_message_size'])
@pytest.mark.parametrize('value', [0, -1, 1.5, True])
def test_byte_bounds_must_be_positive_counts(option: str, value: Any) -> None:
    with pytest.raises(InvalidArgument, match=option):
        RedisBroker(REDIS_TEST_DSN, **{option: value})


@pytest.mark.parametrize(('dsn', 'part', 'shown'), [
    ('redis://localhost/x', "database (path) must be a number from 0 to 2147483647, got 'x'", 'redis://localhost/x'),
    ('redis://localhost/0?db=x', "database (?db=) must be a number", 'redis://localhost/0?db=x'),
    ('redis://localhost/-1', "database (path) must be a number", 'redis://localhost/-1'),
    ('redis://localhost/2147483648', "database (path) must be a number", 'redis://localhost/2147483648'),
    ('redis://:s3cret@localhost:70000/0', "port must be a number from 1 to 65535, got '70000'",
     'redis://:***@localhost:70000/0'),
    ('redis://:s3cret@localhost:abc/0', "port must be a number from 1 to 65535, got 'abc'",
     'redis://:***@localhost:abc/0'),
    ('redis://:s3cret@[::1/0', "host '[::1' opens '[' and never closes it", 'redis://:***@[::1/0'),
    ('redis://::1:6379/0', 'IPv6 address without brackets', 'redis://::1:6379/0'),
    ('redis://a:1,b:2/0', 'must be one', 'redis://a:1,b:2/0'),
    ('http://localhost/0', "scheme must be one of redis, rediss, unix", 'http://localhost/0'),
    ('redis+cluster://:s3cret@h:99999/', "port must be a number from 1 to 65535, got '99999'",
     'redis+cluster://:***@h:99999/'),
    ('redis+cluster://h:7000/2', 'database of a Redis Cluster can only be 0', 'redis+cluster://h:7000/2'),
    ('redis://:s3/cret@localhost/0', "password holds '/', '?' or '#' as is", '(not shown)'),
    ('redis://:s3#cret@localhost/0', "password holds '/', '?' or '#' as is", '(not shown)'),
    ('redis://:s3?cret@localhost/0', "password holds '/', '?' or '#' as is", '(not shown)'),
])
@pytest.mark.parametrize('build', [RedisBroker, RedisSignalBus])
def test_a_malformed_dsn_is_refused_when_built_naming_the_part(
        build: Callable[[str], object], dsn: str, part: str, shown: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        build(dsn)
    message = str(refused.value)
    assert part in message and shown in message
    assert 's3cret' not in message and 'cret' not in message


@pytest.mark.parametrize('dsn', ['redis://localhost', 'redis://', 'redis://u:p%2Fw@[::1]:6379/15',
                                 'rediss://h:6380/3?ssl_cert_reqs=none', 'unix:///run/redis.sock?db=2',
                                 'redis://h/0?client_name=a@b', 'redis+cluster://a:7000,[::1]:7001/0'])
def test_well_formed_dsns_are_taken(dsn: str) -> None:
    RedisBroker(dsn)
    RedisSignalBus(dsn)
