"""Signal groups on the session's Redis Cluster (``redis_cluster`` fixture) under a failover: the
master of a signal's stream slot killed mid-stream; with ``wait_replicas=1`` every grouped send
that returned is handled by the group; and exactly what asynchronous replication loses without it."""
from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from redis.crc import key_slot

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


async def _signal_on(cluster: Cluster, master: int, prefix: str) -> str:
    """A signal name whose stream, under bus prefix ``prefix``, is in a slot ``master`` serves."""
    ranges = (await cluster.masters())[master]
    for i in range(10_000):
        name = f'bound_{i}'
        slot = key_slot(group_stream(prefix, name).encode())
        if any(start <= slot <= end for start, end in ranges):
            return name
    raise RuntimeError(f'no signal name for master {master}')


async def _empty(bus: RedisSignalBus, store: str) -> bool:
    return (await bus.groups.queue_depth(store)).total == 0


async def test_async_replication_loses_exactly_the_unconfirmed_grouped_sends(cluster: Cluster) -> None:
    """With the replica of the stream's master cut off, the master acks grouped sends it cannot pass
    on; killed then, those and only those are lost for the group once the replica takes over. With
    ``wait_replicas=1`` no grouped send returns in that window (``NotReplicated``)."""
    victim = sorted(await cluster.masters())[1]
    replica = await cluster.replica_of(victim)
    prefix = f'T{uuid.uuid4().hex[:12]}'
    orders = Signal(await _signal_on(cluster, victim, prefix), Order)
    store = f'{orders.name}@billing'
    handled: set[int] = set()
    got = Collector()

    class Billing(MicroAgent):
        @receiver(orders, group='billing', concurrency=10)
        async def bill(self, order: Order) -> None:
            handled.add(order.number)
            got.add(order.number)

    # a long timeout only bounds a slow machine; the send into the cut-off window waits the short one
    durable = RedisSignalBus(cluster.dsn, prefix=prefix, wait_replicas=1, wait_timeout=5)
    hasty = RedisSignalBus(cluster.dsn, prefix=prefix, wait_replicas=1, wait_timeout=0.3)
    plain = RedisSignalBus(cluster.dsn, prefix=prefix)
    joined = RedisSignalBus(cluster.dsn, prefix=prefix)
    member = RedisSignalBus(cluster.dsn, prefix=prefix)
    try:
        async with Billing(bus=joined):
            pass  # the group exists (from now on), with no member reading while replication is cut
        for number in range(50):  # replicated for sure
            await durable[orders].send('shop', Order(number))
        await plain[orders].send('shop', Order(-1))  # the senders know the group: no registry read later
        await hasty[orders].send('shop', Order(-2))
        # cut replication: the replica stops reading, then the master drops its link
        cluster.kill(replica, signal.SIGSTOP)
        master = cluster.client(victim)
        try:
            await master.execute_command('CLIENT', 'KILL', 'TYPE', 'replica')  # type: ignore[no-untyped-call]
        finally:
            await master.aclose()
        for number in range(50, 70):  # acked by the master, unreplicated
            await plain[orders].send('shop', Order(number))
        with pytest.raises(NotReplicated):  # a confirmed send does not return in that window
            await hasty[orders].send('shop', Order(70))
        cluster.kill(victim)
        cluster.kill(replica, signal.SIGCONT)
        await eventually(lambda: _failed_over(cluster, group_stream(prefix, orders.name), replica), timeout=30)
        await plain[orders].send('shop', Order(71))  # works as soon as the replica took over
        await cluster.restart(victim)  # it rejoins, as the replica of the new master
        await durable[orders].send('shop', Order(72))  # with a replica again, confirmed sends return again
        async with Billing(bus=member):
            await got.wait(54, timeout=30)
            await eventually(lambda: _empty(member, store), timeout=10)
        assert handled == {-2, -1, *range(50), 71, 72}  # lost: 50..69 (unreplicated) and the unconfirmed 70
    finally:
        for bus in (durable, hasty, plain, joined, member):
            await bus.close()
        client = cluster_client()
        try:
            await drop_groups(client, prefix)
        finally:
            await client.aclose()
