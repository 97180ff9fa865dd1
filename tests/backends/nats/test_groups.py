"""Signal groups on NATS, what the conformance suite cannot show: a member killed with ``kill -9``
holding signals loses none (another takes them after the visibility timeout), a live slow member
keeps what it holds, the layout on the server, senders learning of a group from JetStream's
advisories, foreign entries dead-lettered, a requeue reaching its own group only, and acknowledged
grouped sends surviving a server restart (on a private server)."""
from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import nats
import pytest
from nats.js.api import DeliverPolicy, DiscardPolicy

from microagent import MicroAgent, Signal, receiver
from microagent.backends.nats import NATSSignalBus
from microagent.backends.nats.groupindex import LIST_TIMEOUT, GroupLayout, name_token
from microagent.groups import GroupOptions
from microagent.message import Message
from tests.conformance.backends import delete_nats_streams
from tests.helpers import Collector, eventually
from tests.nats_support import private_nats
from tests.services import NATS_DSN, require_nats

pytestmark = pytest.mark.nats


class Order(msgspec.Struct, frozen=True):
    number: int


@pytest.fixture
async def buses(unique: str) -> AsyncIterator[Callable[..., NATSSignalBus]]:
    """Buses on one unique prefix; closed, and their groups' streams deleted, afterwards."""
    require_nats()
    opened: list[NATSSignalBus] = []

    def make(**options: Any) -> NATSSignalBus:
        bus = NATSSignalBus(NATS_DSN, prefix=f'T{unique}', **options)
        opened.append(bus)
        return bus

    yield make
    for bus in opened:
        await bus.close()
    await delete_nats_streams(list(opened))


MEMBER = '''
import asyncio, sys
from microagent import MicroAgent, Signal, receiver
from microagent.backends.nats import NATSSignalBus
from microagent.groups import GroupOptions

orders = Signal(sys.argv[3])

class Stuck(MicroAgent):
    @receiver(orders, group='billing', concurrency=3)
    async def on_order(self, **order: int) -> None:
        print(order['number'], flush=True)
        await asyncio.Event().wait()  # never done: killed while holding its signals

async def main() -> None:
    bus = NATSSignalBus(sys.argv[1], prefix=sys.argv[2], group_options=GroupOptions(visibility_timeout=1.0))
    async with Stuck(bus=bus):
        print('ready', flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
'''


async def test_a_member_killed_holding_signals_loses_none(buses: Callable[..., NATSSignalBus], unique: str) -> None:
    orders = Signal(f'order_{unique}')
    child = await asyncio.create_subprocess_exec(sys.executable, '-c', MEMBER, NATS_DSN, f'T{unique}', orders.name,
                                                 stdout=asyncio.subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 20) == b'ready\n'
        sender = buses()
        for number in range(10):
            await sender[orders].send('shop', number=number)
        taken = [int(await asyncio.wait_for(child.stdout.readline(), 20)) for _ in range(3)]
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    killed = time.monotonic()
    got: dict[int, list[Message]] = {}
    done = asyncio.Event()

    class Billing(MicroAgent):
        @receiver(orders, group='billing')
        async def on_order(self, message: Message, **order: int) -> None:
            got.setdefault(order['number'], []).append(message)
            if len(got) == 10:
                done.set()

    async with Billing(bus=buses(group_options=GroupOptions(visibility_timeout=1.0))):
        await asyncio.wait_for(done.wait(), 15)
        await asyncio.sleep(0.3)  # a duplicate would come right behind
    assert time.monotonic() - killed < 1.0 + 5.0  # within the visibility timeout (and a fetch or two)
    assert sorted(got) == list(range(10))
    assert all(len(messages) == 1 for messages in got.values())
    assert all(got[n][0].redelivered and got[n][0].attempt == 2 for n in taken)
    assert all(messages[0].attempt <= 2 for messages in got.values())  # others it had prefetched, maybe


async def test_a_live_member_keeps_a_slow_signal_past_the_visibility_timeout(
        buses: Callable[..., NATSSignalBus], unique: str) -> None:
    orders = Signal(f'order_{unique}')
    options = GroupOptions(visibility_timeout=0.4)
    calls: Counter[str] = Counter()
    started, finished = asyncio.Event(), asyncio.Event()

    class Slow(MicroAgent):
        @receiver(orders, group='billing', timeout=10)
        async def on_order(self, **order: int) -> None:
            calls['slow'] += 1
            started.set()
            await asyncio.sleep(2.0)  # five visibility timeouts
            finished.set()

    class Quick(MicroAgent):
        @receiver(orders, group='billing')
        async def on_order(self, **order: int) -> None:
            calls['quick'] += 1

    async with Slow(bus=buses(group_options=options)):
        await buses()[orders].send('shop', number=1)
        await asyncio.wait_for(started.wait(), 10)
        async with Quick(bus=buses(group_options=options)):  # another member, free to take it
            await asyncio.wait_for(finished.wait(), 10)
            await asyncio.sleep(0.5)
    assert calls == Counter({'slow': 1})


async def test_the_layout_on_the_server(buses: Callable[..., NATSSignalBus], unique: str) -> None:
    orders = Signal(f'order.paid_{unique}')
    got = Collector()

    class Billing(MicroAgent):
        @receiver(orders, group='billing')
        async def on_order(self, **order: int) -> None:
            got.add(order['number'])

    class Ledger(MicroAgent):
        @receiver(orders, group='ledger', start='first')
        async def on_order(self, **order: int) -> None:
            got.add(-order['number'])

    options = GroupOptions(max_length=50, max_age=3600, visibility_timeout=7)
    layout = GroupLayout.of(f'T{unique}', orders.name, 'billing')
    assert layout.stream == f'SG-T{unique}-order_Dpaid__{unique}'
    assert layout.subject == f'sg.T{unique}.order_Dpaid__{unique}'
    async with Billing(bus=buses(group_options=options)):
        await buses()[orders].send('shop', number=1)
        await got.wait(1)
    async with Ledger(bus=buses(group_options=options)):  # a new group from 'first': what the stream retains
        await got.wait(2)
    assert got.items == [1, -1]
    client = await nats.connect(NATS_DSN)
    try:
        js = client.jetstream()
        stream = (await js.stream_info(layout.stream)).config
        assert (stream.subjects, stream.max_msgs, stream.max_age, stream.discard) == (
            [layout.subject], 50, 3600, DiscardPolicy.OLD)
        billing = (await js.consumer_info(layout.stream, 'billing')).config
        assert (billing.durable_name, billing.ack_wait, billing.deliver_policy, billing.filter_subject) == (
            'billing', 7, DeliverPolicy.NEW, layout.subject)
        ledger = (await js.consumer_info(layout.stream, 'ledger')).config
        assert ledger.deliver_policy == DeliverPolicy.ALL
        assert (await js.stream_info(layout.dead_stream)).config.subjects == [f'{layout.subject}.dead.*']
    finally:
        await client.close()


def test_names_on_the_server_are_single_safe_tokens() -> None:
    names = ['a', 'a.b', 'a_Db', 'a-b', 'a_Hb', 'a__b', 'PUB/SUB', 'é', 'x y', '$JS']
    tokens = [name_token(name) for name in names]
    assert len(set(tokens)) == len(names)  # injective
    assert all(token.isascii() and token.replace('_', '').isalnum() for token in tokens)


async def test_a_sender_learns_of_a_new_group_from_the_servers_advisories(
        buses: Callable[..., NATSSignalBus], unique: str) -> None:
    orders = Signal(f'order_{unique}')
    got = Collector()

    class Billing(MicroAgent):
        @receiver(orders, group='billing')
        async def on_order(self, **order: int) -> None:
            got.add(order['number'])

    sender = buses()
    await sender[orders].send('shop', number=0)  # no group yet: a core publish alone
    index = sender.transport.groups_index
    assert not index.streams and index._acks is None  # nothing through JetStream
    async with Billing(bus=buses()):
        stream = GroupLayout.of(sender.prefix, orders.name, 'billing').stream

        async def learnt() -> bool:
            return stream in index.streams
        await eventually(learnt)
        await sender[orders].send('shop', number=1)
        assert await got.wait(1) == [1]


async def test_a_foreign_entry_is_dead_lettered_and_the_group_goes_on(
        buses: Callable[..., NATSSignalBus], unique: str) -> None:
    orders = Signal(f'order_{unique}', Order)
    got = Collector()

    class Billing(MicroAgent):
        @receiver(orders, group='billing')
        async def on_order(self, order: Order, sender: str) -> None:
            got.add((order.number, sender))

    bus = buses()
    async with Billing(bus=bus):
        layout = GroupLayout.of(bus.prefix, orders.name, 'billing')
        client = await nats.connect(NATS_DSN)
        try:  # a plain JetStream client writes what it likes
            js = client.jetstream()
            await js.publish(layout.subject, b'not json')
            await js.publish(layout.subject, b'{"number": 2}', headers={'x-sender': 'x' * 5000})
        finally:
            await client.close()
        await buses()[orders].send('shop', Order(3))
        await got.wait(2)
        store = f'{orders.name}@billing'

        async def dead() -> bool:
            return await bus.groups.dead_letter_count(store) == 1
        await eventually(dead)
        (letter,) = await bus.groups.dead_letters(store)
    assert letter.body == b'not json'
    assert letter.reason
    assert got.items == [(2, 'x' * 1024), (3, 'shop')]


async def test_a_requeued_dead_letter_goes_to_its_own_group_alone(
        buses: Callable[..., NATSSignalBus], unique: str) -> None:
    orders = Signal(f'order_{unique}', Order)
    got = Collector()
    broken = {13}

    class Billing(MicroAgent):
        @receiver(orders, group='billing', max_retries=0)
        async def on_order(self, order: Order) -> None:
            if order.number in broken:
                raise RuntimeError('broken')
            got.add(('billing', order.number))

    class Ledger(MicroAgent):
        @receiver(orders, group='ledger')
        async def on_order(self, order: Order) -> None:
            got.add(('ledger', order.number))

    bus = buses()
    store = f'{orders.name}@billing'
    async with Billing(bus=bus), Ledger(bus=buses()):
        await buses()[orders].send('shop', Order(13))
        await got.wait(1)

        async def dead() -> bool:
            return await bus.groups.dead_letter_count(store) == 1
        await eventually(dead)
        broken.clear()
        assert await bus.groups.requeue_dead_letters(store) == 1
        await buses()[orders].send('shop', Order(14))
        await got.wait(4)
        await asyncio.sleep(0.3)
    assert sorted(got.items) == [('billing', 13), ('billing', 14), ('ledger', 13), ('ledger', 14)]
    assert await bus.groups.dead_letter_count(store) == 0


async def test_a_send_goes_on_once_its_groups_are_deleted(buses: Callable[..., NATSSignalBus], unique: str) -> None:
    orders = Signal(f'order_{unique}')

    class Billing(MicroAgent):
        @receiver(orders, group='billing')
        async def on_order(self, **order: int) -> None: ...

    async with Billing(bus=buses()):
        pass
    sender = buses()
    await sender[orders].send('shop', number=1)
    layout = GroupLayout.of(sender.prefix, orders.name, 'billing')
    assert layout.stream in sender.transport.groups_index.streams
    client = await nats.connect(NATS_DSN)
    try:
        await client.jetstream().delete_stream(layout.stream)
    finally:
        await client.close()
    sender.transport.groups_index.streams.add(layout.stream)  # as if the advisory were not there yet
    await sender[orders].send('shop', number=2)  # no stream answers: the index forgets it, the send goes on
    assert layout.stream not in sender.transport.groups_index.streams


async def test_acknowledged_grouped_sends_survive_a_server_restart(unique: str) -> None:
    orders = Signal(f'order_{unique}')
    got = Collector()

    class Billing(MicroAgent):
        @receiver(orders, group='billing')
        async def on_order(self, **order: int) -> None:
            got.add(order['number'])

    async with private_nats() as server:
        await server.start()
        prefix = f'T{unique}'
        opened = [NATSSignalBus(server.dsn, prefix=prefix) for _ in range(3)]
        first, sender, again = opened
        try:
            async with Billing(bus=first):
                pass  # the group exists; every member is down
            for number in range(100):
                await sender[orders].send('shop', number=number)  # each acknowledged by the stream
            await server.stop()
            await server.start()
            async with Billing(bus=again):
                await got.wait(100, timeout=20)
        finally:
            for bus in opened:
                await bus.close()
    assert sorted(got.items) == list(range(100))


async def test_a_bus_whose_user_may_not_use_jetstream_sends_signals_as_before(
        unique: str, tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The one listing of a connection cannot be answered (no permission): the first send waits for
    it once, at most ``LIST_TIMEOUT``; the listing goes on in the background and no later send waits."""
    config = tmp_path / 'nats.conf'
    config.write_text('authorization { users = [ {user: "a", password: "b", permissions: {'
                      'publish: {deny: ["$JS.API.>"]}, subscribe: {deny: ["$JS.EVENT.>"]}}} ] }\n')
    pings = Signal(f'ping_{unique}')
    got = Collector()

    class Listener(MicroAgent):
        @receiver(pings)
        async def on_ping(self, **payload: int) -> None:
            got.add(payload['n'])

    async with private_nats() as server:
        await server.start('-c', str(config))
        dsn = f'nats://a:b@127.0.0.1:{server.port}'
        listener, sender = NATSSignalBus(dsn, prefix=f'T{unique}'), NATSSignalBus(dsn, prefix=f'T{unique}')
        try:
            async with Listener(bus=listener):
                started = time.monotonic()
                await sender[pings].send('test', n=0)
                assert time.monotonic() - started < LIST_TIMEOUT + 1.0
                started = time.monotonic()
                for n in range(1, 51):
                    await sender[pings].send('test', n=n)
                assert time.monotonic() - started < 1.0
                await got.wait(51)
        finally:
            for bus in (listener, sender):
                await bus.close()
    assert sorted(got.items) == list(range(51))
    assert any('cannot list the signal groups' in record.getMessage() for record in caplog.records)


async def test_depth_is_the_groups_lag_its_signals_in_hand_and_its_delayed_retries(
        buses: Callable[..., NATSSignalBus], unique: str) -> None:
    orders = Signal(f'order_{unique}')
    gate = asyncio.Event()
    held = Collector()

    class Billing(MicroAgent):
        @receiver(orders, group='billing', max_retries=5, retry_delay=30.0, concurrency=1)
        async def on_order(self, **order: int) -> None:
            held.add(order['number'])
            if order['number'] == 0:
                raise RuntimeError('later')  # retried in 30 s: delayed
            await gate.wait()

    bus = buses()
    store = f'{orders.name}@billing'
    async with Billing(bus=bus):
        pass  # the group exists; no member reads it
    sender = buses()
    for number in range(5):
        await sender[orders].send('shop', number=number)
    depth = await bus.groups.queue_depth(store)
    assert (depth.ready, depth.delayed, depth.in_flight) == (5, 0, 0)
    async with Billing(bus=bus):
        await held.wait(2)  # 0 failed (delayed), 1 is in hand, the others prefetched: all taken

        async def taken() -> bool:
            depth = await bus.groups.queue_depth(store)
            return (depth.ready, depth.delayed, depth.in_flight) == (0, 1, 4)
        await eventually(taken)
        gate.set()
    assert await bus.groups.transport.exists(store)
    assert not await bus.groups.transport.exists(f'{orders.name}@nobody')
