"""Redis backend under faults: a consumer killed mid-batch, a server restart, idle connections,
a large backlog drained with bounded concurrency."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import sys
import textwrap
from collections.abc import AsyncIterator

import msgspec
import pytest
from redis.asyncio import Redis

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.tools.redis import RedisBroker, RedisSignalBus
from tests.backends import REDIS_TEST_DSN
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.redis


class Job(msgspec.Struct, frozen=True):
    job_id: int


async def _drop(client: Redis, *names: str) -> None:
    for name in names:
        await client.delete(name)
        async for key in client.scan_iter(match=f'{name}:*'):
            await client.delete(key)


_WORKER = textwrap.dedent('''
    import asyncio, sys
    import msgspec
    from redis.asyncio import Redis
    from microagent import MicroAgent, Queue, consumer
    from microagent.tools.redis import RedisBroker

    class Job(msgspec.Struct, frozen=True):
        job_id: int

    dsn, name = sys.argv[1], sys.argv[2]
    queue = Queue(name, Job)

    async def main() -> None:
        marks = Redis.from_url(dsn)

        class Worker(MicroAgent):
            @consumer(queue, concurrency=50)
            async def work(self, job: Job) -> None:
                await asyncio.sleep(0.01)
                await marks.rpush(name + ':test:handled', job.job_id)

        async with Worker(broker=RedisBroker(dsn, heartbeat=1.0)):
            await asyncio.Event().wait()

    asyncio.run(main())
''')


async def test_consumer_killed_mid_batch_loses_nothing(raw: Redis, unique: str) -> None:
    name = f'killed_{unique}'
    queue = Queue(name, Job)
    total = 1000
    await raw.rpush(name, *[msgspec.json.encode(Job(i)) for i in range(total)])
    child = await asyncio.create_subprocess_exec(sys.executable, '-c', _WORKER, REDIS_TEST_DSN, name)
    handled_here = 0
    try:
        await eventually(lambda: _at_least(raw, f'{name}:test:handled', 200), timeout=20)
        child.kill()  # SIGKILL: no cleanup of any kind
        await child.wait()
        there = {int(i) for i in await raw.lrange(f'{name}:test:handled', 0, -1)}
        assert len(there) < total  # killed mid-batch, with messages in flight
        seen = set(there)

        done = asyncio.Event()

        class Survivor(MicroAgent):
            @consumer(queue, concurrency=50)
            async def work(self, job: Job) -> None:
                nonlocal handled_here
                handled_here += 1
                seen.add(job.job_id)
                if len(seen) == total:
                    done.set()

        broker = RedisBroker(REDIS_TEST_DSN, heartbeat=1.0)
        try:
            async with Survivor(broker=broker):
                await asyncio.wait_for(done.wait(), 20)
                # messages the dead process handled but never acked come back too: wait for them
                await eventually(lambda: _drained(raw, name), timeout=20)
        finally:
            await broker.close()
        duplicates = len(there) + handled_here - total
        print(f'killed consumer handled {len(there)}, survivor {handled_here}, duplicates {duplicates}')
        assert 0 <= duplicates <= 50  # at most what was in flight when the process died
        assert await _drained(raw, name)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await _drop(raw, name)


async def _drained(client: Redis, name: str) -> bool:
    """Nothing waits in the queue and no consumer (dead or alive) holds a message of it."""
    return await client.llen(name) == 0 and not [k async for k in client.scan_iter(match=f'{name}:inflight:*')]


async def _at_least(client: Redis, key: str, count: int) -> bool:
    return int(await client.llen(key)) >= count


Servers = list[asyncio.subprocess.Process]


@pytest.fixture
async def private_redis() -> AsyncIterator[tuple[int, Servers]]:
    """A throwaway redis-server on a spare port; the test may stop and start it again."""
    if shutil.which('redis-server') is None:
        if os.environ.get('MICROAGENT_REQUIRE_SERVICES'):
            pytest.fail('redis-server is not installed and MICROAGENT_REQUIRE_SERVICES is set')
        pytest.skip('redis-server is not installed')
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    servers: Servers = []
    yield port, servers
    for server in servers:
        if server.returncode is None:
            server.kill()
            await server.wait()


async def _start_server(port: int, servers: Servers) -> None:
    servers.append(await asyncio.create_subprocess_exec(
        'redis-server', '--port', str(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
        stdout=asyncio.subprocess.DEVNULL))
    client = Redis(port=port)
    try:
        await eventually(lambda: _pings(client), timeout=10, every=0.05)
    finally:
        await client.aclose()


async def _pings(client: Redis) -> bool:
    try:
        return bool(await client.ping())
    except (OSError, ConnectionError, Exception):
        return False


async def test_agent_recovers_by_itself_when_redis_restarts(
        private_redis: tuple[int, Servers], unique: str,
        caplog: pytest.LogCaptureFixture) -> None:
    port, servers = private_redis
    await _start_server(port, servers)
    dsn = f'redis://127.0.0.1:{port}/0'
    signal = Signal(f'ping_{unique}', Job)
    queue = Queue(f'work_{unique}', Job)
    signals, messages = Collector(), Collector()

    class Service(MicroAgent):
        @receiver(signal)
        async def on_ping(self, job: Job) -> None:
            signals.add(job.job_id)

        @consumer(queue)
        async def work(self, job: Job) -> None:
            messages.add(job.job_id)

    bus, broker = RedisSignalBus(dsn), RedisBroker(dsn)
    caplog.set_level(logging.INFO)
    async with Service(bus=bus, broker=broker):
        await bus[signal].send('test', Job(1))
        await broker[queue].send(Job(1))
        await signals.wait(1)
        await messages.wait(1)

        servers[-1].terminate()
        await servers[-1].wait()
        await eventually(lambda: _logged(caplog, 'reconnect 3'), timeout=10)  # backing off while down
        await _start_server(port, servers)

        client = Redis(port=port)
        try:  # the bus subscribes again by itself: wait for the server to see its patterns
            await eventually(lambda: _subscribed(client), timeout=10)
        finally:
            await client.aclose()
        await bus[signal].send('test', Job(2))
        await broker[queue].send(Job(2))
        assert await signals.wait(2, timeout=10) == [1, 2]
        assert await messages.wait(2, timeout=10) == [1, 2]
    await bus.close()
    await broker.close()
    retries = [r for r in caplog.records if 'reconnect' in r.getMessage() or 'retry' in r.getMessage()]
    assert 3 <= len(retries) <= 40, [r.getMessage() for r in retries]  # backed off, never a tight loop
    assert 'subscribed again' in caplog.text


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text


async def _subscribed(client: Redis) -> bool:
    return int(await client.execute_command('PUBSUB', 'NUMPAT')) > 0  # type: ignore[no-untyped-call]


async def test_idle_connections_survive_the_default_socket_timeout(raw: Redis, unique: str) -> None:
    """redis-py's default 5 s socket timeout killed 1.x's idle consumer; ten idle seconds here."""
    dsn = f'{REDIS_TEST_DSN}?socket_timeout=5'
    signal = Signal(f'late_{unique}', Job)
    queue = Queue(f'late_{unique}', Job)
    got = Collector()

    class Patient(MicroAgent):
        @receiver(signal)
        async def on_signal(self, job: Job) -> None:
            got.add(('signal', job.job_id))

        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add(('message', job.job_id))

    bus, broker = RedisSignalBus(dsn), RedisBroker(dsn)
    try:
        async with Patient(bus=bus, broker=broker):
            await asyncio.sleep(10)  # the point of the test: nothing happens for 10 s
            await bus[signal].send('test', Job(1))
            await raw.rpush(queue.name, b'{"job_id": 2}')
            assert sorted(await got.wait(2)) == [('message', 2), ('signal', 1)]
    finally:
        await bus.close()
        await broker.close()
        await _drop(raw, queue.name)


async def test_large_backlog_is_drained_with_bounded_concurrency(raw: Redis, unique: str) -> None:
    name, total, limit = f'backlog_{unique}', 100_000, 64
    queue = Queue(name, Job)
    bodies = [msgspec.json.encode(Job(i)) for i in range(total)]
    for start in range(0, total, 10_000):
        await raw.rpush(name, *bodies[start:start + 10_000])
    live = peak = handled = peak_tasks = 0
    done = asyncio.Event()

    class Drainer(MicroAgent):
        @consumer(queue, concurrency=limit)
        async def work(self, job: Job) -> None:
            nonlocal live, peak, handled, peak_tasks
            live += 1
            peak = max(peak, live)
            if job.job_id % 1000 == 0:
                peak_tasks = max(peak_tasks, len(asyncio.all_tasks()))
            await asyncio.sleep(0)
            live -= 1
            handled += 1
            if handled == total:
                done.set()

    broker = RedisBroker(REDIS_TEST_DSN)
    try:
        async with Drainer(broker=broker):
            await asyncio.wait_for(done.wait(), 60)
        assert handled == total and peak <= limit
        assert peak_tasks <= limit + 20  # handlers, plus a fixed few (loop, heartbeat, ack flush, test)
        await eventually(lambda: _drained(raw, name))  # acks are sent in the background
    finally:
        await broker.close()
        await _drop(raw, name)
