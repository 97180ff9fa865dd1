"""Signal groups on Redis streams: what the conformance suite cannot show. A member killed holding
signals, a slow live member, 1.x agents beside groups, untrusted stored entries, the layout; on one
server (db 9) and on the session's Redis Cluster (``redis-cluster``)."""
from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from microagent import Message, MicroAgent, Signal, receiver
from microagent.backends.redis import RedisSignalBus
from microagent.backends.redis.keys import GroupKeys, group_registry, group_stream
from microagent.groups import GroupOptions
from tests.conformance.backends import Backend, redis_admin, redis_backend
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.redis


class Order(msgspec.Struct, frozen=True):
    number: int


@pytest.fixture(params=['redis', 'redis-cluster'])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The conformance Redis backend, on one server or the session's cluster: a unique prefix, its
    groups' keys deleted afterwards."""
    cluster = request.param == 'redis-cluster'
    if cluster:
        request.getfixturevalue('redis_cluster')
    async with redis_backend(cluster=cluster) as backend:
        yield backend


@pytest.fixture
async def raw(redis: Backend) -> AsyncIterator[Any]:
    """A plain redis-py client on the backend's server (a cluster client on the cluster)."""
    client = redis_admin(redis.name == 'redis-cluster')
    yield client
    await client.aclose()


def keys_of(backend: Backend, prefix: str, signal: str) -> GroupKeys:
    return GroupKeys.of(prefix, signal, 'billing', cluster=backend.name == 'redis-cluster')


def bus_of(backend: Backend, **options: Any) -> RedisSignalBus:
    bus = backend.bus()
    assert isinstance(bus, RedisSignalBus)
    if 'group_options' in options:
        bus.group_options = options.pop('group_options')
    assert not options
    return bus


def prefix_of(backend: Backend) -> str:
    return bus_of(backend).prefix


_MEMBER = textwrap.dedent('''
    import asyncio, sys
    import msgspec
    from microagent import MicroAgent, Signal, receiver
    from microagent.backends.redis import RedisSignalBus
    from microagent.backends.redis.client import client
    from microagent.groups import GroupOptions

    class Order(msgspec.Struct, frozen=True):
        number: int

    dsn, prefix, name = sys.argv[1:4]
    signal = Signal(name, Order)

    async def main() -> None:
        marks = client(dsn, {})  # one server or a cluster

        class Billing(MicroAgent):
            @receiver(signal, group='billing', timeout=600)
            async def on_order(self, order: Order) -> None:
                await marks.rpush(prefix + ':test:taken', order.number)
                await asyncio.Event().wait()  # holds every signal it takes, until killed

        bus = RedisSignalBus(dsn, prefix=prefix, group_options=GroupOptions(visibility_timeout=1.0))
        async with Billing(bus=bus):
            await marks.rpush(prefix + ':test:joined', 1)
            await asyncio.Event().wait()

    asyncio.run(main())
''')


@pytest.mark.parametrize('prefix', ['PUBSUB', 'APP{eu}', 'a.b-c'])
def test_on_a_cluster_every_key_of_a_group_is_in_the_slot_of_its_stream(prefix: str) -> None:
    from redis.crc import key_slot

    keys = GroupKeys.of(prefix, 'order_created', 'billing', cluster=True)
    slots = {key_slot(key.encode()) for key in (keys.stream, keys.retry, keys.held, keys.dead)}
    assert slots == {key_slot(group_stream(prefix, 'order_created').encode())}
    # one server keeps plain names
    plain = GroupKeys.of(prefix, 'order_created', 'billing')
    assert plain.retry == f'{group_stream(prefix, "order_created")}:retry:billing'


async def test_a_member_killed_holding_signals_loses_none_another_takes_them_after_the_visibility_timeout(
        redis: Backend, raw: Redis, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    prefix = prefix_of(redis)
    child = await asyncio.create_subprocess_exec(sys.executable, '-c', _MEMBER, redis.dsn, prefix, signal.name)
    try:
        await eventually(lambda: _length(raw, f'{prefix}:test:joined', 1), timeout=20)
        sender = redis.bus()
        for number in range(20):
            await sender[signal].send('shop', Order(number))
        await eventually(lambda: _length(raw, f'{prefix}:test:taken', 20), timeout=10)
        child.kill()  # SIGKILL: no cleanup of any kind, every signal still pending in its consumer
        await child.wait()
        killed = time.monotonic()
        keys = keys_of(redis, prefix, signal.name)
        assert (await raw.xpending(keys.stream, 'billing'))['pending'] == 20

        got = Collector()

        class Billing(MicroAgent):
            @receiver(signal, group='billing')
            async def on_order(self, order: Order, *, message: Message) -> None:
                got.add((order.number, message.redelivered, message.attempt))

        async with Billing(bus=bus_of(redis, group_options=GroupOptions(visibility_timeout=1.0))):
            await got.wait(20, timeout=10)
            taken = time.monotonic() - killed
            await eventually(lambda: _settled(raw, keys), timeout=5)
        assert sorted(number for number, _, _ in got.items) == list(range(20))
        assert all(redelivered and attempt == 1 for _, redelivered, attempt in got.items)
        # idle for the visibility timeout (1 s) since the dead member's last refresh, plus a claim interval (1 s)
        assert taken < 3.5, taken
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await raw.delete(f'{prefix}:test:taken', f'{prefix}:test:joined')


async def test_a_live_member_keeps_what_it_holds_past_the_visibility_timeout(redis: Backend, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    calls = Collector()
    done = Collector()

    class Billing(MicroAgent):
        @receiver(signal, group='billing', timeout=10)
        async def on_order(self, order: Order) -> None:
            calls.add(order.number)
            await asyncio.sleep(1.6)  # more than three visibility timeouts: the lease is refreshed
            done.add(order.number)

    options = GroupOptions(visibility_timeout=0.4)
    async with Billing(bus=bus_of(redis, group_options=options)), Billing(bus=bus_of(redis, group_options=options)):
        await redis.bus()[signal].send('shop', Order(1))
        await done.wait(1, timeout=10)
        await asyncio.sleep(1.0)  # a claim by the other member (every 0.1 s here) would have come by now
    assert calls.items == [1]


async def test_a_member_that_stops_hands_back_what_it_holds_at_once(redis: Backend, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    started = Collector()
    got = Collector()

    class Stuck(MicroAgent):
        @receiver(signal, group='billing', concurrency=1, timeout=600)
        async def on_order(self, order: Order) -> None:
            started.add(order.number)
            await asyncio.Event().wait()  # until the stop cancels it

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def on_order(self, order: Order, *, message: Message) -> None:
            got.add((order.number, message.redelivered, message.attempt))

    options = GroupOptions(visibility_timeout=60)  # what comes back comes from the release, not a claim
    stuck = Stuck(bus=bus_of(redis, group_options=options))
    await stuck._start()
    try:
        sender = redis.bus()
        for number in range(10):
            await sender[signal].send('shop', Order(number))
        await started.wait(1)
        # one handling, some prefetched (the engine fetches again while it holds at most 2), the rest in the stream
        await eventually(lambda: _held(stuck, f'{signal.name}@billing', 3), timeout=5)
        held = (await stuck.bus.groups.queue_depth(f'{signal.name}@billing')).in_flight
    finally:
        await stuck.stop(grace=0.2)
    async with Billing(bus=bus_of(redis, group_options=options)):
        await got.wait(10, timeout=5)
    assert sorted(number for number, _, _ in got.items) == list(range(10))
    assert sum(redelivered for _, redelivered, _ in got.items) == held  # those it held, handed back
    assert {attempt for _, _, attempt in got.items} == {1}


async def test_1x_agents_on_the_same_redis_receive_every_signal_grouped_receivers_too(
        redis: Backend, raw: Redis, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    prefix = prefix_of(redis)
    got = Collector()

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def on_order(self, order: Order, *, sender: str, message: Message) -> None:
            got.add((order.number, sender, message.headers.get('tenant')))

    legacy = RedisSignalBus(redis.dsn, prefix=prefix, wire='1.x')
    member = RedisSignalBus(redis.dsn, prefix=prefix, wire='1.x')
    pubsub = raw.pubsub()
    await pubsub.psubscribe(f'{prefix}:{signal.name}:*')  # the 1.x agent: its receiver's pattern
    try:
        async with Billing(bus=member):
            for number in range(50):
                await legacy[signal].send('shop', Order(number), headers={'tenant': 'acme'})
            await got.wait(50)
            heard: list[Any] = []
            async with asyncio.timeout(5):
                while len(heard) < 50:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                    if message is not None:
                        heard.append(message)
        # the 1.x agent gets every signal, bare, on the 1.x channel
        assert [m['channel'] for m in heard] == [f'{prefix}:{signal.name}:shop'.encode()] * 50
        assert [msgspec.json.decode(m['data']) for m in heard] == [{'number': n} for n in range(50)]
        # the grouped receiver on a 1.x-wire bus gets them once each, with sender and headers (the stream keeps frames)
        assert sorted(got.items) == [(n, 'shop', 'acme') for n in range(50)]
    finally:
        await pubsub.aclose()
        await legacy.close()
        await member.close()


async def test_a_signal_without_groups_is_only_published_no_stream(redis: Backend, raw: Redis, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()

    class Audit(MicroAgent):
        @receiver(signal)
        async def on_order(self, order: Order) -> None:
            got.add(order.number)

    bus = bus_of(redis)
    async with Audit(bus=redis.bus()):
        await bus[signal].send('shop', Order(1))
        await got.wait(1)
    assert not await raw.exists(group_stream(bus.prefix, signal.name))


async def test_layout_a_stream_per_signal_a_consumer_group_per_group_the_retention_in_the_registry(
        redis: Backend, raw: Redis, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def on_order(self, order: Order) -> None:
            got.add(order.number)

    class Mailer(MicroAgent):
        @receiver(signal, group='mailer')
        async def on_order(self, order: Order) -> None:
            got.add(-order.number)

    prefix = prefix_of(redis)
    async with Billing(bus=bus_of(redis, group_options=GroupOptions(max_length=7, max_age=60))), \
            Mailer(bus=bus_of(redis, group_options=GroupOptions(max_length=5, max_age=120))):
        for number in range(1, 21):
            await redis.bus()[signal].send('shop', Order(number))
        await got.wait(40)
        stream = group_stream(prefix, signal.name)
        assert sorted(g['name'] for g in await raw.xinfo_groups(stream)) == [b'billing', b'mailer']
        assert await raw.xlen(stream) == 7  # the most generous length of its groups
        entry = await raw.hget(group_registry(prefix), f'{signal.name}@mailer')
        assert entry is not None
        assert msgspec.json.decode(entry) == {
            'store': f'{signal.name}@mailer', 'max_length': 5, 'max_age': 120}
        await eventually(lambda: _empty(bus_of(redis), f'{signal.name}@billing'))  # acks are sent within 2 ms


async def test_past_its_max_age_a_group_keeps_only_what_is_younger(redis: Backend, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def on_order(self, order: Order) -> None:
            got.add(order.number)

    options = GroupOptions(max_age=0.3)
    async with Billing(bus=bus_of(redis, group_options=options)):
        pass
    sender = redis.bus()
    for number in range(5):
        await sender[signal].send('shop', Order(number))
    await asyncio.sleep(0.4)  # the five are older than max_age now
    await sender[signal].send('shop', Order(5))
    async with Billing(bus=bus_of(redis, group_options=options)):
        await got.wait(1)
        await asyncio.sleep(0.3)  # nothing more comes
    assert got.items == [5]


async def test_a_new_group_started_from_first_gets_what_the_stream_retains(redis: Backend, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def on_order(self, order: Order) -> None:
            pass

    class Replay(MicroAgent):
        @receiver(signal, group='replay', start='first')
        async def on_order(self, order: Order) -> None:
            got.add(order.number)

    class Late(MicroAgent):
        @receiver(signal, group='late')
        async def on_order(self, order: Order) -> None:
            got.add(-order.number)

    async with Billing(bus=redis.bus()):
        sender = redis.bus()
        for number in range(1, 6):
            await sender[signal].send('shop', Order(number))
    async with Replay(bus=redis.bus()), Late(bus=redis.bus()):
        await got.wait(5)
        await redis.bus()[signal].send('shop', Order(6))
        await got.wait(7)
    assert sorted(got.items) == [-6, 1, 2, 3, 4, 5, 6]


async def test_foreign_entries_are_dead_lettered_with_their_reason_and_the_group_goes_on(
        redis: Backend, raw: Redis, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def on_order(self, order: Order, *, sender: str) -> None:
            got.add((order.number, sender))

    bus = bus_of(redis)
    keys = keys_of(redis, bus.prefix, signal.name)
    store = f'{signal.name}@billing'
    async with Billing(bus=bus):
        await raw.xadd(keys.stream, {'x': 'no data field'})
        await raw.xadd(keys.stream, {'d': b'\x1eMA1{"broken', 's': 'shop'})
        await raw.xadd(keys.stream, {'d': b'{"number": 1}', 's': 'x' * 5000})
        await raw.xadd(keys.stream, {'d': b'{"number": "one"}', 's': 'shop'})
        await raw.zadd(keys.retry, {b'not a retry': 0})
        await redis.bus()[signal].send('shop', Order(2))
        await got.wait(1)
        await eventually(lambda: _dead(bus, store, 5), timeout=10)
        reasons = sorted(letter.reason for letter in await bus.groups.dead_letters(store))
    assert got.items == [(2, 'shop')]
    assert len(reasons) == 5
    assert any('without its data field' in reason for reason in reasons)
    assert any('envelope frame' in reason for reason in reasons)
    assert any('sender of more than' in reason for reason in reasons)
    assert any('malformed retry' in reason for reason in reasons)
    assert any('number' in reason for reason in reasons)


async def test_a_join_whose_notification_was_missed_is_read_at_the_next_refresh(
        redis: Backend, raw: Redis, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    bus = bus_of(redis)
    bus.transport.groups_refresh = 0.2
    stream = group_stream(bus.prefix, signal.name)
    await bus[signal].send('shop', Order(1))  # knows the (empty) registry from now on
    assert not await raw.exists(stream)
    # as a member would, but with no notification heard
    await raw.hset(group_registry(bus.prefix), f'{signal.name}@billing', b'{"max_length": 5, "max_age": 60}')

    async def written() -> bool:
        await bus[signal].send('shop', Order(2))
        return bool(await raw.exists(stream))

    await eventually(written, timeout=5, every=0.05)
    assert 1 <= await raw.xlen(stream) <= 5


async def test_a_bad_registry_entry_is_ignored_and_sends_go_on(
        redis: Backend, raw: Redis, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    signal = Signal(f'order_{unique}', Order)
    bus = bus_of(redis)
    await raw.hset(group_registry(bus.prefix), mapping={f'{signal.name}@a': b'not json',
                                                         f'{signal.name}@b': b'{"max_length": -1, "max_age": 5}',
                                                         'no-at-sign': b'{"max_length": 1, "max_age": 5}'})
    got = Collector()

    class Audit(MicroAgent):
        @receiver(signal)
        async def on_order(self, order: Order) -> None:
            got.add(order.number)

    async with Audit(bus=redis.bus()):
        await bus[signal].send('shop', Order(1))
        await got.wait(1)
    assert not await raw.exists(group_stream(bus.prefix, signal.name))
    assert 'Ignored group' in caplog.text


async def test_a_retry_waits_its_delay_keeps_its_attempt_and_depth_shows_it_delayed(
        redis: Backend, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()
    release = asyncio.Event()

    class Billing(MicroAgent):
        @receiver(signal, group='billing', max_retries=3, retry_delay=0.5)
        async def on_order(self, order: Order, *, message: Message) -> None:
            got.add((message.attempt, time.monotonic()))
            if not release.is_set():
                raise RuntimeError('not yet')

    bus = bus_of(redis)
    store = f'{signal.name}@billing'
    async with Billing(bus=bus):
        await redis.bus()[signal].send('shop', Order(1))
        await got.wait(1)
        await eventually(lambda: _delayed(bus, store), timeout=5)
        release.set()
        await got.wait(2, timeout=5)
        await eventually(lambda: _empty(bus, store), timeout=5)
    (first, sent), (second, retried) = got.items
    assert (first, second) == (1, 2)
    assert retried - sent >= 0.45


async def test_a_grouped_handler_over_its_timeout_is_dead_lettered_with_the_reason(redis: Backend, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)

    class Billing(MicroAgent):
        @receiver(signal, group='billing', timeout=0.2, max_retries=0)
        async def on_order(self, order: Order) -> None:
            await asyncio.sleep(30)

    bus = bus_of(redis)
    store = f'{signal.name}@billing'
    async with Billing(bus=bus):
        await redis.bus()[signal].send('shop', Order(1))
        await eventually(lambda: _dead(bus, store, 1), timeout=5)
        (letter,) = await bus.groups.dead_letters(store)
    assert letter.reason.startswith('timeout:') and letter.attempts == 1


async def _held(agent: MicroAgent, store: str, count: int) -> bool:
    depth = await agent.bus.groups.queue_depth(store)
    return depth.in_flight >= count and depth.total == 10


async def _length(client: Redis, key: str, count: int) -> bool:
    return int(await client.llen(key)) >= count


async def _settled(client: Redis, keys: GroupKeys) -> bool:
    return int((await client.xpending(keys.stream, keys.group))['pending']) == 0


async def _dead(bus: Any, store: str, count: int) -> bool:
    return bool(await bus.groups.dead_letter_count(store) >= count)


async def _delayed(bus: Any, store: str) -> bool:
    return bool((await bus.groups.queue_depth(store)).delayed == 1)


async def _empty(bus: Any, store: str) -> bool:
    return bool((await bus.groups.queue_depth(store)).total == 0)
