"""Redis backend under faults: a consumer killed mid-batch, a server restart, idle connections,
a large backlog drained with bounded concurrency; a consumer draining through OOM, a server
asleep, paused or killed; ``close`` with the server unreachable."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.backends.redis import RedisBroker, RedisSignalBus
from microagent.backends.redis.keys import QueueKeys, inflight_key
from tests.conformance.backends import REDIS_TEST_DSN
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
    from microagent.backends.redis import RedisBroker

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
        in_flight = sum([await raw.llen(k) async for k in raw.scan_iter(match=f'{name}:inflight:*')])
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
        # at most what was in flight when the process died (handled ones whose ack was not sent yet,
        # more than its 50 handlers when a loaded machine delays the ack round trip)
        assert 0 <= duplicates <= in_flight
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


async def _start_server(port: int, servers: Servers, *options: str) -> None:
    """Start (or restart) the private server; ``options`` are more redis-server arguments."""
    servers.append(await asyncio.create_subprocess_exec(
        'redis-server', '--port', str(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
        *options, stdout=asyncio.subprocess.DEVNULL))
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


# server faults while a consumer drains: every message whose send returned is handled, none stays
# orphaned in an in-flight list, and consumption resumes once the fault is over


async def _private_dsn(private_redis: tuple[int, Servers], *options: str) -> tuple[str, Redis]:
    """Start the private server; its DSN and an admin client on it (the test closes the client)."""
    port, servers = private_redis
    await _start_server(port, servers, *options)
    return f'redis://127.0.0.1:{port}/0', Redis(port=port)


@contextlib.asynccontextmanager
async def _draining(broker: RedisBroker, queue: Queue[Job], seen: set[int],
                    pace: float = 0.005) -> AsyncIterator[None]:
    """A consumer (8 handlers, ``pace`` s per message) that records each job it handles."""
    class Drainer(MicroAgent):
        @consumer(queue, concurrency=8)
        async def work(self, job: Job) -> None:
            await asyncio.sleep(pace)
            seen.add(job.job_id)

    try:
        async with Drainer(broker=broker):
            yield
    finally:
        await broker.close()


async def _covers(seen: set[int], sent: set[int]) -> bool:
    return sent <= seen


async def _send(dsn: str, queue: Queue[Job], ids: range) -> set[int]:
    """Send through a broker of its own: these are acknowledged sends (``send_many`` returned)."""
    producer = RedisBroker(dsn)
    try:
        await producer[queue].send_many([Job(i) for i in ids])
    finally:
        await producer.close()
    return set(ids)


async def _registered(client: Redis, broker: RedisBroker, name: str) -> bool:
    uid = broker.transport.uid
    keys = QueueKeys.of(name, uid)
    return bool(await client.exists(keys.heartbeat)) and bool(await client.sismember(keys.consumers, uid))


Fault = Callable[[Redis, RedisBroker], Awaitable[None]]


async def _recovers_from(private_redis: tuple[int, Servers], unique: str, fault: Fault, *options: str,
                         read_margin: float = 5.0, heartbeat: float = 10.0) -> None:
    """Drain 1000 messages; ``fault`` strikes mid-drain; 200 more are sent after it; all are handled,
    nothing stays in flight, and the consumer is still registered (reclaimable if it dies)."""
    dsn, admin = await _private_dsn(private_redis, *options)
    queue, seen = Queue(f'fault_{unique}', Job), set[int]()
    broker = RedisBroker(dsn, heartbeat=heartbeat)
    broker.transport.read_margin = read_margin
    try:
        sent = await _send(dsn, queue, range(1000))
        async with _draining(broker, queue, seen):
            await eventually(lambda: _covers(seen, set(range(200))), timeout=10)
            assert not sent <= seen  # the fault strikes with messages left to drain
            await fault(admin, broker)
            sent |= await _send(dsn, queue, range(1000, 1200))
            await eventually(lambda: _covers(seen, sent), timeout=15)
            await eventually(lambda: _drained(admin, queue.name), timeout=10)
            await eventually(lambda: _registered(admin, broker, queue.name), timeout=10)
    finally:
        await admin.aclose()


async def _out_of_memory(admin: Redis, broker: RedisBroker) -> None:
    """A maxmemory episode of 2 s: every write that may grow memory fails with OOM."""
    await admin.config_set('maxmemory', 1)
    await asyncio.sleep(2)  # the length of the episode, not a wait for an outcome
    await admin.config_set('maxmemory', 0)


async def test_a_consumer_drains_through_an_out_of_memory_episode(
        private_redis: tuple[int, Servers], unique: str) -> None:
    # heartbeat 1 s: the 2 s episode outlasts it, so only a heartbeat that survives OOM (or a
    # fetch that registers again) leaves the consumer registered afterwards
    await _recovers_from(private_redis, unique, _out_of_memory, heartbeat=1.0)


async def test_a_consumer_drains_through_a_server_asleep(private_redis: tuple[int, Servers], unique: str) -> None:
    async def sleep(admin: Redis, broker: RedisBroker) -> None:
        await admin.execute_command('DEBUG', 'SLEEP', 1.5)  # type: ignore[no-untyped-call]

    await _recovers_from(private_redis, unique, sleep, '--enable-debug-command', 'yes', read_margin=0.3)


async def test_a_consumer_drains_through_a_server_killed_and_restarted(
        private_redis: tuple[int, Servers], unique: str, tmp_path: Path) -> None:
    port, servers = private_redis

    async def kill(admin: Redis, broker: RedisBroker) -> None:
        servers[-1].kill()  # SIGKILL: what was written survives in the append-only file, nothing else
        await servers[-1].wait()
        await _start_server(port, servers, *durable)

    durable = ('--dir', str(tmp_path), '--appendonly', 'yes', '--appendfsync', 'always')
    await _recovers_from(private_redis, unique, kill, *durable, read_margin=0.5)


async def test_messages_moved_before_a_pause_are_not_orphaned(
        private_redis: tuple[int, Servers], unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server moves a message in flight (BLMOVE), then pauses: the rest of the fetch times out
    client side. The moved message must be delivered while the consumer lives, not at its close."""
    dsn, admin = await _private_dsn(private_redis)
    queue, seen = Queue(f'paused_{unique}', Job), set[int]()
    broker = RedisBroker(dsn)
    broker.transport.read_margin = 0.3
    blocking = broker.transport._blocking
    move = blocking.execute_command
    paused = asyncio.Event()

    async def pause_after_a_move(*args: Any, **options: Any) -> Any:
        reply = await move(*args, **options)
        if args[0] == 'BLMOVE' and reply is not None and not paused.is_set():
            paused.set()
            await admin.execute_command('CLIENT', 'PAUSE', 1500, 'ALL')  # type: ignore[no-untyped-call]
        return reply

    monkeypatch.setattr(blocking, 'execute_command', pause_after_a_move)
    try:
        async with _draining(broker, queue, seen):
            await eventually(lambda: _blocked(admin), timeout=10)  # idle: waiting in BLMOVE
            sent = await _send(dsn, queue, range(20))
            await paused.wait()
            await eventually(lambda: _covers(seen, sent), timeout=10)
            await eventually(lambda: _drained(admin, queue.name), timeout=10)
    finally:
        await admin.aclose()


async def _blocked(client: Redis) -> bool:
    return int((await client.info('clients'))['blocked_clients']) > 0


async def test_the_heartbeat_survives_out_of_memory_and_still_reclaims(
        private_redis: tuple[int, Servers], unique: str) -> None:
    """After an OOM episode the heartbeat still runs: it returns a dead consumer's messages."""
    dsn, admin = await _private_dsn(private_redis)
    name, seen = f'beat_{unique}', set[int]()
    broker = RedisBroker(dsn, heartbeat=0.6)
    try:
        async with _draining(broker, Queue(name, Job), seen):
            await eventually(lambda: _registered(admin, broker, name), timeout=10)
            await admin.config_set('maxmemory', 1)  # beats fail with OOM until the heartbeat expires
            await eventually(lambda: _expired(admin, QueueKeys.of(name, broker.transport.uid).heartbeat), timeout=10)
            await admin.config_set('maxmemory', 0)
            dead = QueueKeys.of(name, 'dead-consumer')  # its heartbeat expired long ago: absent
            await admin.rpush(dead.inflight, *[msgspec.json.encode(Job(i)) for i in range(5)])
            await admin.sadd(dead.consumers, 'dead-consumer')
            await eventually(lambda: _covers(seen, set(range(5))), timeout=10)
            await eventually(lambda: _registered(admin, broker, name), timeout=10)
    finally:
        await admin.aclose()


async def _expired(client: Redis, key: str) -> bool:
    return not await client.exists(key)


async def test_close_is_bounded_while_the_server_is_unreachable(
        private_redis: tuple[int, Servers], unique: str, caplog: pytest.LogCaptureFixture) -> None:
    """A stopped server cannot make ``close`` hang; what it held comes back after its heartbeat."""
    dsn, admin = await _private_dsn(private_redis)
    _, servers = private_redis
    queue = Queue(f'unreachable_{unique}', Job)
    sent = await _send(dsn, queue, range(10))
    broker = RedisBroker(dsn, heartbeat=1.0)
    transport = broker.transport
    transport.close_timeout = 1.0
    taken = await transport.fetch(queue, 5, 1.0)
    assert len(taken) == 5
    servers[-1].send_signal(signal.SIGSTOP)
    try:
        async with asyncio.timeout(transport.close_timeout + transport.read_margin * 2 + 5):
            await broker.close()
    finally:
        servers[-1].send_signal(signal.SIGCONT)
    assert 'close gave up' in caplog.text and 'heartbeat expired' in caplog.text
    seen = set[int]()
    try:
        async with _draining(RedisBroker(dsn, heartbeat=1.0), queue, seen):
            await eventually(lambda: _covers(seen, sent), timeout=15)
            await eventually(lambda: _drained(admin, queue.name), timeout=10)
    finally:
        await admin.aclose()


class _Crash(BaseException):
    """Escapes the heartbeat's ``except Exception``: stands for a bug that kills the task."""


async def test_a_dead_heartbeat_task_is_restarted(
        raw: Redis, unique: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    name, seen = f'restart_{unique}', set[int]()
    broker = RedisBroker(REDIS_TEST_DSN, heartbeat=0.6)
    beat = broker.transport._beat
    crashed = asyncio.Event()

    async def crash_once(owned: Any) -> None:
        if not crashed.is_set():
            crashed.set()
            raise _Crash('heartbeat bug')
        await beat(owned)

    try:
        async with _draining(broker, Queue(name, Job), seen):
            await eventually(lambda: _registered(raw, broker, name), timeout=10)
            monkeypatch.setattr(broker.transport, '_beat', crash_once)
            await crashed.wait()
            dead = QueueKeys.of(name, 'dead-consumer')  # only a running heartbeat reclaims it
            await raw.rpush(dead.inflight, *[msgspec.json.encode(Job(i)) for i in range(5)])
            await raw.sadd(dead.consumers, 'dead-consumer')
            await eventually(lambda: _covers(seen, set(range(5))), timeout=10)
        assert [r for r in caplog.records if r.levelno == logging.ERROR and 'heartbeat task ended' in r.getMessage()]
    finally:
        await _drop(raw, name)


async def test_a_failed_settle_keeps_the_message_held_so_a_resync_returns_nothing_in_hand(
        raw: Redis, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two identical 1.x bodies in hand; retrying one fails. The resync that follows must not take
    the failed one for an orphan (the engine still holds it and will retry or release it), nor the
    other: nothing goes back to the queue while both are in hand."""
    name = f'held_{unique}'
    queue, body = Queue(name, Job), msgspec.json.encode(Job(1))
    broker = RedisBroker(REDIS_TEST_DSN)
    transport = broker.transport
    try:
        await raw.rpush(name, body, body)
        first, _in_hand = await transport.fetch(queue, 2, 1.0)
        retry = transport._scripts['RETRY']

        async def unreachable(**_: Any) -> None:
            raise RedisConnectionError('retry lost')

        monkeypatch.setitem(transport._scripts, 'RETRY', unreachable)
        with pytest.raises(RedisConnectionError):
            await transport.retry(queue, first, 60, 'failed')
        monkeypatch.setitem(transport._scripts, 'RETRY', retry)
        assert await transport.fetch(queue, 1, 0.01) == []  # resyncs first: nothing is an orphan
        assert await raw.llen(name) == 0 and await raw.llen(inflight_key(name, transport.uid)) == 2
        await transport.release(queue, [first])  # what the engine does once its tries are spent
        assert await raw.lrange(name, 0, -1) == [body]
    finally:
        await broker.close()
        await _drop(raw, name)


async def test_settling_a_message_no_longer_in_flight_here_is_reported(
        raw: Redis, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    name = f'gone_{unique}'
    queue = Queue(name, Job)
    broker = RedisBroker(REDIS_TEST_DSN)
    transport = broker.transport
    try:
        await raw.rpush(name, msgspec.json.encode(Job(1)))
        (taken,) = await transport.fetch(queue, 1, 1.0)
        await raw.delete(inflight_key(name, transport.uid))  # returned by someone else meanwhile
        await transport.dead_letter(queue, taken, 'failed')
        assert await raw.llen(f'{name}:dead') == 0
        assert "could not dead-letter a message: it is no longer in this consumer's in-flight list" in caplog.text
    finally:
        await broker.close()
        await _drop(raw, name)
