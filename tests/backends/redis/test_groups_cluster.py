"""Signal groups on the session's Redis Cluster (``redis_cluster`` fixture) under a failover: the
master of a signal's stream slot killed mid-stream; with ``wait_replicas=1`` every grouped send
that returned is handled by the group."""
from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from microagent import MicroAgent, NotReplicated, Signal, receiver
from microagent.backends.redis import RedisSignalBus
from microagent.backends.redis.keys import group_stream
from microagent.groups import GroupOptions
from tests.conformance.backends import cluster_client, drop_groups
from tests.helpers import Collector, eventually
from tests.redis_cluster_support import Cluster


class Order(msgspec.Struct, frozen=True):
    number: int


@pytest.fixture
async def cluster(redis_cluster: Cluster) -> AsyncIterator[Cluster]:
    """The session's cluster, made whole again after the test killed a node."""
    yield redis_cluster
    for process in redis_cluster.processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
    for port in redis_cluster.ports:
        await redis_cluster.restart(port)
    await redis_cluster.wait_healthy()


async def _failed_over(cluster: Cluster, key: str, replica: int) -> bool:
    try:
        return await cluster.master_of(key) == replica
    except RuntimeError:
        return False


async def _at_least(items: list[int], count: int) -> bool:
    return len(items) >= count


async def test_a_master_killed_mid_stream_loses_no_grouped_send_with_wait_replicas(cluster: Cluster) -> None:
    """``kill -9`` of the master of the signal's stream slot while a sender sends grouped signals
    with ``wait_replicas=1`` and a member handles them: its replica is promoted, sending and the
    member resume by themselves, and every send that returned is handled. A send raises
    ``NotReplicated`` from the kill until the killed node, started again, replicates the new master."""
    prefix = f'T{uuid.uuid4().hex[:12]}'
    orders = Signal(f'order_{uuid.uuid4().hex[:10]}', Order)
    stream = group_stream(prefix, orders.name)
    victim = await cluster.master_of(stream)
    replica = await cluster.replica_of(victim)
    handled: set[int] = set()
    first = Collector()

    class Billing(MicroAgent):
        @receiver(orders, group='billing', concurrency=10)
        async def bill(self, order: Order) -> None:
            handled.add(order.number)
            first.add(order.number)

    member = RedisSignalBus(cluster.dsn, prefix=prefix, group_options=GroupOptions(visibility_timeout=3.0))
    sender = RedisSignalBus(cluster.dsn, prefix=prefix, wait_replicas=1, wait_timeout=0.2)
    sent: list[int] = []
    failed: list[int] = []

    async def produce(count: int) -> None:
        for _ in range(count):
            number = len(sent) + len(failed)
            try:
                await sender[orders].send('shop', Order(number))
                sent.append(number)
            except NotReplicated:  # not confirmed by a replica: not counted as sent
                failed.append(number)

    try:
        async with Billing(bus=member):
            await produce(1)
            await first.wait(1, timeout=10)
            await produce(199)
            producing = asyncio.create_task(produce(300))
            await eventually(lambda: _at_least(sent, 250), timeout=30)
            cluster.kill(victim)  # mid-stream
            await eventually(lambda: _failed_over(cluster, stream, replica), timeout=30)
            await cluster.restart(victim)  # it rejoins as the replica of the new master
            await producing  # sends during the failover waited for the new master, or failed
            before = len(sent)
            await produce(100)
            assert len(sent) == before + 100  # with a replica again, confirmed sends return again

            async def all_handled() -> bool:
                return set(sent) <= handled
            await eventually(all_handled, timeout=60)
        assert not set(sent) - handled
        assert len(sent) >= 350
    finally:
        await sender.close()
        await member.close()
        client = cluster_client()
        try:
            await drop_groups(client, prefix)
        finally:
            await client.aclose()
