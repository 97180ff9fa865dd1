"""Signal groups on Redis, durability of acknowledged sends: ``wait_replicas`` for grouped sends
(broadcast-only sends never wait), and a private server with AOF restarted under a member: every
acknowledged send is handled. The Redis Cluster master failover is in ``test_groups_cluster.py``."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from microagent import MicroAgent, NotReplicated, Signal, receiver
from microagent.backends.redis import RedisSignalBus
from microagent.backends.redis.keys import group_stream
from microagent.errors import InvalidArgument
from microagent.groups import GroupOptions
from tests.conformance.backends import Backend, redis_backend
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.redis


class Order(msgspec.Struct, frozen=True):
    number: int


@pytest.mark.parametrize('options', [{'wait_replicas': -1}, {'wait_replicas': True}, {'wait_replicas': 1.5},
                                     {'wait_timeout': 0}, {'wait_timeout': float('inf')}, {'wait_timeout': '1'}])
def test_wait_replicas_and_wait_timeout_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        RedisSignalBus('redis://localhost/9', **options)


@pytest.fixture
async def redis() -> AsyncIterator[Backend]:
    async with redis_backend() as backend:
        yield backend


async def test_a_grouped_send_waits_for_replicas_a_broadcast_only_send_does_not(redis: Backend, unique: str) -> None:
    """The shared test server has no replica: a grouped send asking for one raises ``NotReplicated``
    after ``wait_timeout`` (the entry is on the master), while a send of a signal without groups is a
    plain PUBLISH that never waits."""
    grouped, broadcast = Signal(f'grouped_{unique}', Order), Signal(f'broadcast_{unique}', Order)
    got, heard = Collector(), Collector()

    class Billing(MicroAgent):
        @receiver(grouped, group='billing')
        async def bill(self, order: Order) -> None:
            got.add(order.number)

        @receiver(broadcast)
        async def audit(self, order: Order) -> None:
            heard.add(order.number)

    member = redis.bus()
    assert isinstance(member, RedisSignalBus)
    sender = RedisSignalBus(member.dsn, prefix=member.prefix, wait_replicas=1, wait_timeout=0.1)
    try:
        async with Billing(bus=member):
            await sender[broadcast].send('shop', Order(1))  # no group: not refused, no WAIT
            assert await heard.wait(1) == [1]
            with pytest.raises(NotReplicated, match='1 replicas asked, 0 confirmed'):
                await sender[grouped].send('shop', Order(2))
            assert await got.wait(1) == [2]  # on the master all the same: delivered
    finally:
        await sender.close()


# a private server with AOF (fsync always), restarted under a member


@pytest.fixture
async def private_aof(tmp_path: Path) -> AsyncIterator[tuple[int, list[asyncio.subprocess.Process], Path]]:
    """A throwaway redis-server port and data directory; the test starts (and restarts) it."""
    if shutil.which('redis-server') is None:
        if os.environ.get('MICROAGENT_REQUIRE_SERVICES'):
            pytest.fail('redis-server is not installed and MICROAGENT_REQUIRE_SERVICES is set')
        pytest.skip('redis-server is not installed')
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    servers: list[asyncio.subprocess.Process] = []
    yield port, servers, tmp_path
    for server in servers:
        if server.returncode is None:
            server.kill()
            await server.wait()


async def _start_aof(port: int, servers: list[asyncio.subprocess.Process], directory: Path) -> None:
    servers.append(await asyncio.create_subprocess_exec(
        'redis-server', '--port', str(port), '--bind', '127.0.0.1', '--dir', str(directory), '--save', '',
        '--appendonly', 'yes', '--appendfsync', 'always', stdout=asyncio.subprocess.DEVNULL))
    client = Redis(port=port)
    try:
        await eventually(lambda: _loaded(client), timeout=20, every=0.05)
    finally:
        await client.aclose()


async def _loaded(client: Redis) -> bool:
    """Answers, with its AOF loaded (a server loading its data answers ``LOADING`` errors)."""
    try:
        return int((await client.info('persistence'))['loading']) == 0
    except Exception:
        return False


async def test_a_server_restart_loses_no_acknowledged_grouped_send(
        private_aof: tuple[int, list[asyncio.subprocess.Process], Path], unique: str) -> None:
    """A member holds 5 signals in its handlers, the rest of 300 wait in the stream; the server is
    killed (-9) and started again on its data directory: the member reconnects by itself, finishes
    what it held, reads the rest and what is sent after the restart. 0 acknowledged sends lost."""
    port, servers, directory = private_aof
    await _start_aof(port, servers, directory)
    dsn, prefix = f'redis://127.0.0.1:{port}/0', f'T{unique}'
    orders = Signal(f'order_{unique}', Order)
    gate = asyncio.Event()
    taken: set[int] = set()
    handled: set[int] = set()

    class Billing(MicroAgent):
        @receiver(orders, group='billing', concurrency=5)
        async def bill(self, order: Order) -> None:
            taken.add(order.number)
            await gate.wait()
            handled.add(order.number)

    member = RedisSignalBus(dsn, prefix=prefix, group_options=GroupOptions(visibility_timeout=3.0))
    sender = RedisSignalBus(dsn, prefix=prefix)
    admin = Redis(port=port)
    try:
        async with Billing(bus=member):
            for number in range(300):
                await sender[orders].send('shop', Order(number))  # acknowledged: on disk (fsync always)
            await eventually(lambda: _at_least(taken, 5), timeout=10)
            assert await admin.xlen(group_stream(prefix, orders.name)) == 300
            assert not handled

            servers[-1].kill()  # SIGKILL: no shutdown save, only the AOF
            await servers[-1].wait()
            await _start_aof(port, servers, directory)
            assert await admin.xlen(group_stream(prefix, orders.name)) == 300  # the stream came back
            gate.set()
            for number in range(300, 350):  # the sender reconnects by itself too
                await sender[orders].send('shop', Order(number))

            await eventually(lambda: _covers(handled, set(range(350))), timeout=60)
        assert set(range(350)) <= handled
    finally:
        gate.set()
        await admin.aclose()
        await sender.close()
        await member.close()


async def _at_least(items: set[int], count: int) -> bool:
    return len(items) >= count


async def _covers(seen: set[int], sent: set[int]) -> bool:
    return sent <= seen
