"""Redis Cluster, on the real 3+3 cluster the session starts (``redis_cluster`` fixture): keys of a
queue in its list's slot, queues spread over masters, a consumer killed mid-batch, a master killed
mid-stream (its replica promoted), and exactly what asynchronous replication can lose."""
from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from microagent import MicroAgent, NotReplicated, Queue, Signal, consumer, receiver
from microagent.backends.redis import RedisBroker, RedisSignalBus
from microagent.backends.redis.cluster import ClusterListener, connect_options, is_cluster
from microagent.backends.redis.keys import QueueKeys, base_of, hash_tag
from microagent.errors import InvalidArgument
from tests.conformance.backends import cluster_client, drop_queues
from tests.helpers import Collector, eventually
from tests.redis_cluster_support import Cluster


class Job(msgspec.Struct, frozen=True):
    job_id: int


# the DSN and the key names, no server needed


def test_a_cluster_dsn_names_its_nodes_credentials_and_options() -> None:
    nodes, options = connect_options('redis+cluster://user:s3cret@10.0.0.1:7000,10.0.0.2,[::1]:7002/?socket_timeout=2')
    assert nodes == [('10.0.0.1', 7000), ('10.0.0.2', 6379), ('::1', 7002)]
    assert options == {'username': 'user', 'password': 's3cret', 'socket_timeout': 2.0}
    assert connect_options('rediss+cluster://h:1')[1] == {'ssl': True}
    assert is_cluster('redis+cluster://h:1/') and is_cluster('REDISS+CLUSTER://h:1') and not is_cluster('redis://h')


@pytest.mark.parametrize('dsn', ['redis+cluster://h:1/3', 'redis+cluster://h:x/', 'redis+cluster://h:1,/'])
def test_a_malformed_cluster_dsn_is_refused(dsn: str) -> None:
    with pytest.raises(InvalidArgument):
        connect_options(dsn)


def test_keys_of_a_queue_carry_its_name_as_hash_tag_on_a_cluster_only() -> None:
    assert QueueKeys.of('mailer', 'c1').dead == 'mailer:dead'  # one server: the names of before
    keys = QueueKeys.of('mailer', 'c1', cluster=True)
    assert (keys.queue, keys.inflight, keys.dead) == ('mailer', '{mailer}:inflight:c1', '{mailer}:dead')
    assert base_of('jobs{eu}', True) == 'jobs{eu}' and hash_tag('jobs{eu}:dead') == 'eu'
    assert base_of('a{b', True) == '{a{b}' and hash_tag('{a{b}:dead') == hash_tag('{a{b}') == 'a{b'
    for name in ('a}b', '{}x', ''):
        with pytest.raises(InvalidArgument, match='Redis Cluster'):
            base_of(name, True)


# on the cluster


@pytest.fixture
async def cluster(redis_cluster: Cluster) -> AsyncIterator[Cluster]:
    """The session's cluster, made whole again after a test that killed or stopped a node."""
    yield redis_cluster
    for process in redis_cluster.processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
    for port in redis_cluster.ports:
        await redis_cluster.restart(port)
    await redis_cluster.wait_healthy()


async def _drop(*names: str) -> None:
    client = cluster_client()
    try:
        await drop_queues(client, names, cluster=True)
    finally:
        await client.aclose()


@pytest.mark.parametrize('name', ['mailer', 'jobs{eu}', 'a{b', 'x' * 300])
async def test_every_key_of_a_queue_is_in_the_slot_of_its_list(cluster: Cluster, name: str) -> None:
    keys = QueueKeys.of(name, uuid.uuid4().hex, cluster=True)
    client = cluster.client(cluster.ports[0])
    try:
        slots = {int(await client.execute_command('CLUSTER', 'KEYSLOT', key))  # type: ignore[no-untyped-call]
                 for key in (keys.queue, keys.inflight, keys.heartbeat, keys.consumers, keys.delayed,
                             keys.attempts, keys.dead)}
    finally:
        await client.aclose()
    assert len(slots) == 1


async def test_queues_on_every_master_are_served_and_kept_on_their_master(cluster: Cluster, unique: str) -> None:
    masters = sorted(await cluster.masters())
    assert len(masters) == 3
    queues = [Queue(await cluster.name_on(port, f'spread_{unique}_{port}'), Job) for port in masters]
    got = Collector()
    holding = asyncio.Event()

    class Worker(MicroAgent):
        @consumer(queues[0])
        async def first(self, job: Job) -> None:
            got.add((0, job.job_id))

        @consumer(queues[1])
        async def second(self, job: Job) -> None:
            got.add((1, job.job_id))

        @consumer(queues[2])
        async def third(self, job: Job) -> None:
            if job.job_id == 0:
                await holding.wait()  # in flight while the test looks where its keys are
            got.add((2, job.job_id))

    broker = RedisBroker(cluster.dsn)
    try:
        async with Worker(broker=broker):
            for queue in queues:
                await broker[queue].send(Job(0))
                await broker[queue].send(Job(1))
            await got.wait(5, timeout=10)
            # each queue's list, consumers and in-flight keys are on the master of its own slot
            uid = broker.transport.uid
            for queue, port in zip(queues, masters, strict=True):
                keys = QueueKeys.of(queue.name, uid, cluster=True)
                node = cluster.client(port)
                try:
                    assert await node.exists(keys.consumers) == 1
                    if queue is queues[2]:
                        assert await node.llen(keys.inflight) == 1
                finally:
                    await node.aclose()
            holding.set()
            await got.wait(6, timeout=10)
        assert sorted(got.items) == [(q, i) for q in range(3) for i in range(2)]
    finally:
        await broker.close()
        await _drop(*(q.name for q in queues))


_WORKER = textwrap.dedent('''
    import asyncio, sys
    import msgspec
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from microagent import MicroAgent, Queue, consumer
    from microagent.backends.redis import RedisBroker

    class Job(msgspec.Struct, frozen=True):
        job_id: int

    dsn, marks_port, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    queues = [Queue(name, Job) for name in names]

    async def main() -> None:
        marks = RedisCluster(startup_nodes=[ClusterNode('127.0.0.1', marks_port)])

        def handler(name):
            async def work(self, job: Job) -> None:
                await asyncio.sleep(0.01)
                await marks.rpush('{' + name + '}:test:handled', job.job_id)
            return consumer(Queue.get(name), concurrency=30)(work)

        Worker = type('Worker', (MicroAgent,), {f'work_{i}': handler(n) for i, n in enumerate(names)})
        async with Worker(broker=RedisBroker(dsn, heartbeat=1.0)):
            await asyncio.Event().wait()

    asyncio.run(main())
''')


async def test_a_consumer_killed_mid_batch_loses_nothing_on_any_master(cluster: Cluster, unique: str) -> None:
    masters = sorted(await cluster.masters())
    names = [await cluster.name_on(port, f'killed_{unique}_{port}') for port in masters]
    queues = [Queue(name, Job) for name in names]
    per_queue = 300
    raw = cluster_client()
    for name in names:
        await raw.rpush(name, *[msgspec.json.encode(Job(i)) for i in range(per_queue)])
    child = await asyncio.create_subprocess_exec(sys.executable, '-c', _WORKER, cluster.dsn,
                                                 str(cluster.ports[0]), *names)
    try:
        async def started() -> bool:
            return all([await raw.llen('{' + n + '}:test:handled') >= 50 for n in names])
        await eventually(started, timeout=30)
        child.kill()  # SIGKILL: no cleanup of any kind
        await child.wait()
        there = {n: {int(i) for i in await raw.lrange('{' + n + '}:test:handled', 0, -1)} for n in names}
        in_flight = {n: sum([await raw.llen(k) async for k in raw.scan_iter(match=f'{{{n}}}:inflight:*')])
                     for n in names}
        assert sum(in_flight.values()) > 0  # killed mid-batch, with messages in flight
        seen = {n: set(there[n]) for n in names}
        handled_here = dict.fromkeys(names, 0)
        done = asyncio.Event()

        def handler(name: str) -> Any:
            async def work(self: MicroAgent, job: Job) -> None:
                handled_here[name] += 1
                seen[name].add(job.job_id)
                if all(len(s) == per_queue for s in seen.values()):
                    done.set()
            return consumer(Queue.get(name), concurrency=30)(work)

        survivor = type('Survivor', (MicroAgent,), {f'work_{i}': handler(n) for i, n in enumerate(names)})
        broker = RedisBroker(cluster.dsn, heartbeat=1.0)
        try:
            async with survivor(broker=broker):
                await asyncio.wait_for(done.wait(), 30)

                async def drained() -> bool:
                    for n in names:
                        if await raw.llen(n) or [k async for k in raw.scan_iter(match=f'{{{n}}}:inflight:*')]:
                            return False
                    return True
                await eventually(drained, timeout=30)  # the dead consumer's lists are reclaimed on each master
        finally:
            await broker.close()
        for n in names:
            duplicates = len(there[n]) + handled_here[n] - per_queue
            assert 0 <= duplicates <= in_flight[n], (n, duplicates, in_flight[n])
        assert queues  # declared for the worker's names
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await raw.aclose()
        await _drop(*names)


async def _failed_over(cluster: Cluster, name: str, replica: int) -> bool:
    try:
        return await cluster.master_of(name) == replica
    except RuntimeError:
        return False


async def test_a_master_killed_mid_stream_loses_no_sent_message_with_wait_replicas(
        cluster: Cluster, unique: str) -> None:
    """``kill -9`` of the master of the queue's slot (and of the node the bus listens on) while a
    producer sends and an agent consumes: its replica is promoted, sends and consumption resume by
    themselves, and every message whose send returned is handled. A send asking for a replica
    fails (``NotReplicated``) from the kill until a replica serves the new master: the killed node,
    started again, rejoins as one; sends without ``wait_replicas`` work at once."""
    bus = RedisSignalBus(cluster.dsn)
    ping = Signal(f'ping_{unique}', Job)
    pings = Collector()

    class Listener(MicroAgent):
        @receiver(ping)
        async def on_ping(self, job: Job) -> None:
            pings.add(job.job_id)

    listening = Listener(bus=bus)
    await listening.start()
    listener = bus.transport._listener
    assert isinstance(listener, ClusterListener) and listener.listening is not None
    victim = listener.listening[1]
    if victim not in await cluster.masters():  # make the node listened to a master (a graceful failover)
        client = cluster.client(victim)
        try:
            await client.execute_command('CLUSTER', 'FAILOVER')  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()
        await eventually(lambda: _is_master(cluster, victim), timeout=30)
        await cluster.wait_healthy()
    replica = await cluster.replica_of(victim)
    queue = Queue(await cluster.name_on(victim, f'stream_{unique}'), Job)
    handled: set[int] = set()

    class Service(MicroAgent):
        @consumer(queue, concurrency=10)
        async def work(self, job: Job) -> None:
            handled.add(job.job_id)

    broker = RedisBroker(cluster.dsn, wait_replicas=1, wait_timeout=0.2, heartbeat=2.0)
    plain = RedisBroker(cluster.dsn)
    sent: list[int] = []
    failed: list[int] = []

    async def produce(count: int) -> None:
        for _ in range(count):
            job = len(sent) + len(failed)
            try:
                await broker[queue].send(Job(job))
                sent.append(job)
            except NotReplicated:  # the master died between RPUSH and WAIT: not counted as sent
                failed.append(job)

    try:
        async with Service(broker=broker):
            await bus[ping].send('test', Job(0))
            await pings.wait(1, timeout=10)
            await produce(200)
            producing = asyncio.create_task(produce(300))
            await eventually(lambda: _at_least(sent, 250), timeout=30)
            cluster.kill(victim)  # mid-stream
            await eventually(lambda: _failed_over(cluster, queue.name, replica), timeout=30)
            await plain[queue].send(Job(-1))  # no replica needed: works as soon as the replica took over
            await cluster.restart(victim)  # it rejoins as the replica of the new master
            await producing  # sends during the failover waited for the new master, or failed
            before = len(sent)
            await produce(100)
            assert len(sent) == before + 100  # with a replica again, durable sends return again
            sent.append(-1)

            async def all_handled() -> bool:
                return set(sent) <= handled
            await eventually(all_handled, timeout=60)
            await bus[ping].send('test', Job(1))  # the subscriber moved to a live node by itself
            assert await pings.wait(2, timeout=20) == [0, 1]
            assert listener.listening != ('127.0.0.1', victim)
        assert not set(sent) - handled
    finally:
        await listening.stop()
        await bus.close()
        await plain.close()
        await broker.close()
        await _drop(queue.name)


async def _is_master(cluster: Cluster, port: int) -> bool:
    return port in await cluster.masters()


async def _at_least(items: list[int], count: int) -> bool:
    return len(items) >= count


async def _consume_all(dsn: str, queue: Queue[Job], expected: int) -> set[int]:
    """Every message of ``queue`` now: consumed until ``expected`` arrived, then until it is empty."""
    got: set[int] = set()
    changed = Collector()

    class Drainer(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)
            changed.add(job.job_id)

    broker = RedisBroker(dsn)
    try:
        async with Drainer(broker=broker):
            await changed.wait(expected, timeout=30)

            async def empty() -> bool:
                return await broker[queue].length() == 0
            await eventually(empty, timeout=10)
    finally:
        await broker.close()
    return got


async def test_async_replication_loses_exactly_the_unreplicated_sends(cluster: Cluster, unique: str) -> None:
    """The bound, made exact: with its replica cut off, the master acks sends it cannot pass on;
    killed then, those and only those are lost once the replica takes over. With
    ``wait_replicas=1`` no send returns in that window (``NotReplicated``), so none is lost."""
    victim = sorted(await cluster.masters())[1]
    replica = await cluster.replica_of(victim)
    queue = Queue(await cluster.name_on(victim, f'bound_{unique}'), Job)
    # the replica's confirmation comes at once when it is there: a long timeout only bounds a slow
    # machine; the send into the cut-off window waits the short one, since no confirmation can come
    durable = RedisBroker(cluster.dsn, wait_replicas=1, wait_timeout=5)
    hasty = RedisBroker(cluster.dsn, wait_replicas=1, wait_timeout=0.3)
    plain = RedisBroker(cluster.dsn)
    try:
        await plain.transport.redis.initialize()  # the slot map, read before a node stops answering
        for i in range(50):  # replicated for sure
            await durable[queue].send(Job(i))
        # cut replication: the replica stops reading, then the master drops its link (what the link
        # had buffered still reaches the replica; nothing written after it does)
        cluster.kill(replica, signal.SIGSTOP)
        master = cluster.client(victim)
        try:
            await master.execute_command('CLIENT', 'KILL', 'TYPE', 'replica')  # type: ignore[no-untyped-call]
        finally:
            await master.aclose()
        for i in range(50, 70):  # acked by the master, unreplicated
            await plain[queue].send(Job(i))
        with pytest.raises(NotReplicated):  # a durable send does not return in that window
            await hasty[queue].send(Job(70))
        cluster.kill(victim)
        cluster.kill(replica, signal.SIGCONT)
        await eventually(lambda: _failed_over(cluster, queue.name, replica), timeout=30)
        await plain[queue].send(Job(71))  # works as soon as the replica took over
        await cluster.restart(victim)  # it rejoins, as the replica of the new master
        await durable[queue].send(Job(72))  # with a replica again, durable sends return again
        got = await _consume_all(cluster.dsn, queue, 52)
        assert got == {*range(50), 71, 72}  # lost: 50..69 (unreplicated) and the unconfirmed 70
    finally:
        await durable.close()
        await hasty.close()
        await plain.close()
        await _drop(queue.name)


async def test_wait_replicas_on_one_server_without_replicas_refuses_to_pretend(unique: str, raw: Redis) -> None:
    from tests.conformance.backends import REDIS_TEST_DSN

    queue = Queue(f'lonely_{unique}', Job)
    broker = RedisBroker(REDIS_TEST_DSN, wait_replicas=1, wait_timeout=0.05)
    try:
        with pytest.raises(NotReplicated, match='1 replicas asked, 0 confirmed'):
            await broker[queue].send(Job(1))
        assert await raw.llen(queue.name) == 1  # on the master all the same
    finally:
        await broker.close()
        await raw.delete(queue.name)


@pytest.mark.parametrize('value', [-1, True, 1.5])
def test_wait_replicas_must_be_a_count(value: Any) -> None:
    with pytest.raises(InvalidArgument, match='wait_replicas'):
        RedisBroker('redis://127.0.0.1:6379/9', wait_replicas=value)


async def test_a_queue_name_no_hash_tag_can_follow_is_refused_on_a_cluster(redis_cluster: Cluster) -> None:
    broker = RedisBroker(redis_cluster.dsn)
    try:
        with pytest.raises(InvalidArgument, match='Redis Cluster'):  # declared names cannot hold braces, but
            broker.transport._keys('odd}name')                       # a transport may be driven directly
    finally:
        await broker.close()
