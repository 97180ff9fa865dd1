"""Signal groups on RabbitMQ, what the conformance suite cannot show: the layout on the server (a
durable queue per group bound to the bus exchange, its retention arguments, its type), a member
killed with SIGKILL while holding signals (another member gets them at once), a store declared
again with other options, the sender across retries and dead letters, signals whose names share a
prefix, and foreign messages routed to a store."""
from __future__ import annotations

import asyncio
import os
import signal as signals
import sys
import textwrap
from typing import Any

import aiormq
import msgspec
import pytest
from pamqp import commands as spec

from microagent import Message, MicroAgent, Signal, receiver
from microagent.backends.amqp import AMQPGroupTransport
from microagent.errors import DeclarationError
from microagent.groups import GroupOptions
from tests.amqp_support import AMQP_DSN, Servers, queue_types
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.amqp


class Order(msgspec.Struct, frozen=True):
    number: int


def billing(signal: Signal[Order, Any], got: Collector, **options: Any) -> type[MicroAgent]:
    class Billing(MicroAgent):
        @receiver(signal, group='billing', **options)
        async def on_order(self, order: Order, *, sender: str, message: Message) -> None:
            got.add((order.number, sender, message.attempt, message.redelivered))

    return Billing


async def test_a_group_is_a_durable_queue_bound_to_the_bus_exchange_with_its_retention(
        amqp: Servers, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()
    bus = amqp.bus(group_options=GroupOptions(max_length=500, max_age=3600))
    async with billing(signal, got)(bus=bus):
        pass
    name = f'{amqp.prefix}.group.{signal.name}@billing'
    channel = await amqp.raw()
    # the same declaration is a no-op: the queue exists, durable, with exactly these arguments
    ok = await channel.queue_declare(name, durable=True, arguments={
        'x-max-length': 500, 'x-overflow': 'drop-head', 'x-message-ttl': 3_600_000})
    assert ok.message_count == 0 and ok.consumer_count == 0  # no member: kept, not consumed
    # bound to the exchange: a plain publish of the signal lands in it
    await channel.basic_publish(b'{"number": 1}', exchange=amqp.prefix, routing_key=f'{signal.name}.raw',
                                properties=spec.Basic.Properties(message_type=signal.name))
    await eventually(lambda: _ready(channel, name, 1))
    assert await bus.groups.queue_exists(f'{signal.name}@billing')
    assert not await bus.groups.queue_exists(f'{signal.name}@nobody')


async def test_signals_reach_a_store_persistent(amqp: Servers, unique: str) -> None:
    """A classic store keeps what it holds across a RabbitMQ restart only if it was sent persistent."""
    signal = Signal(f'order_{unique}', Order)
    async with billing(signal, Collector())(bus=amqp.bus()):
        pass
    await amqp.bus()[signal].send('shop', Order(1))
    name = f'{amqp.prefix}.group.{signal.name}@billing'
    channel = await amqp.raw()
    await eventually(lambda: _ready(channel, name, 1))
    message = await channel.basic_get(name, no_ack=True)
    assert message.header.properties.delivery_mode == 2
    assert message.routing_key == f'{signal.name}.shop'


async def _ready(channel: Any, name: str, count: int) -> bool:
    return int((await channel.queue_declare(name, passive=True)).message_count or 0) == count


async def test_a_quorum_bus_declares_its_group_stores_quorum(amqp: Servers, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()
    bus = amqp.bus(queue_type='quorum')
    async with billing(signal, got, max_retries=1, retry_delay=0.05)(bus=bus):
        await amqp.bus()[signal].send('shop', Order(1))
        await got.wait(1)
    name = f'{amqp.prefix}.group.{signal.name}@billing'
    types = await queue_types()
    assert types[name] == 'quorum'
    assert types[f'{name}.dead'] == 'quorum'


async def test_a_member_killed_holding_signals_loses_none_another_takes_them_at_once(
        amqp: Servers, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    child = await _member_process(amqp.prefix, signal.name)
    try:
        await _line(child, 'READY')
        sender = amqp.bus()
        for number in range(5):
            await sender[signal].send('shop', Order(number))
        held = sorted([int((await _line(child, 'GOT')).split()[1]) for _ in range(5)])
        assert held == list(range(5))  # the child holds every one, unacknowledged (its handler never returns)

        got = Collector()
        async with billing(signal, got)(bus=amqp.bus(group_options=GroupOptions(visibility_timeout=30))):
            await asyncio.sleep(0.2)
            assert got.items == []  # a live member keeps what it holds
            child.send_signal(signals.SIGKILL)
            await child.wait()
            await got.wait(5, timeout=5)  # far within the visibility timeout: RabbitMQ gives them back at once
            await asyncio.sleep(0.2)
        assert sorted(got.items) == [(n, 'shop', 1, True) for n in range(5)]
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


_MEMBER = textwrap.dedent('''
    import asyncio, sys
    import msgspec
    from microagent import MicroAgent, Signal, receiver
    from microagent.backends.amqp import AMQPSignalBus

    class Order(msgspec.Struct, frozen=True):
        number: int

    signal = Signal(sys.argv[3], Order)

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def on_order(self, order: Order) -> None:
            print('GOT', order.number, flush=True)
            await asyncio.Event().wait()  # holds it until killed

    async def main() -> None:
        async with Billing(bus=AMQPSignalBus(sys.argv[1], prefix=sys.argv[2])):
            print('READY', flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())
''')


async def _member_process(prefix: str, name: str) -> asyncio.subprocess.Process:
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [os.getcwd(), os.environ.get('PYTHONPATH')]))}
    return await asyncio.create_subprocess_exec(sys.executable, '-c', _MEMBER, AMQP_DSN, prefix, name, env=env,
                                                stdout=asyncio.subprocess.PIPE)


async def _line(process: asyncio.subprocess.Process, start: str) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(20):
        while True:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise AssertionError(f'the member process ended (code {await process.wait()}) before {start!r}')
            if line.startswith(start):
                return line


async def test_joining_with_another_retention_is_a_clear_error_and_the_group_goes_on(
        amqp: Servers, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()
    async with billing(signal, got)(bus=amqp.bus(group_options=GroupOptions(max_length=10))):
        other = amqp.bus(group_options=GroupOptions(max_length=20))
        with pytest.raises(DeclarationError) as error:
            async with billing(signal, Collector())(bus=other):
                pass
        text = str(error.value)
        assert f'{signal.name}@billing' in text
        assert "x-max-length=20" in text and 'GroupOptions' in text
        await amqp.bus()[signal].send('shop', Order(1))
        await got.wait(1)


async def test_the_sender_survives_retries_dead_letters_and_requeue(amqp: Servers, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()
    failing = {'on': True}

    class Billing(MicroAgent):
        @receiver(signal, group='billing', max_retries=1, retry_delay=0.05)
        async def on_order(self, order: Order, *, sender: str, message: Message) -> None:
            got.add((sender, message.attempt))
            if failing['on']:
                raise RuntimeError('not now')

    bus = amqp.bus()
    store = f'{signal.name}@billing'
    async with Billing(bus=bus):
        await amqp.bus()[signal].send('shop.eu', Order(1), headers={'tenant': 'acme'})
        await eventually(lambda: _dead(bus, store, 1))
        assert got.items == [('shop.eu', 1), ('shop.eu', 2)]
        (letter,) = await bus.groups.dead_letters(store)
        assert letter.queue == store
        assert letter.envelope.headers is not None
        assert letter.envelope.headers.get('tenant') == 'acme' and 'x-sender' not in letter.envelope.headers
        failing['on'] = False
        assert await bus.groups.requeue_dead_letters(store) == 1
        await got.wait(3)
        assert got.items[2][0] == 'shop.eu'
        assert await bus.groups.purge_dead_letters(store) == 0


async def _dead(bus: Any, store: str, count: int) -> bool:
    return bool(await bus.groups.dead_letter_count(store) == count)


async def test_a_store_does_not_handle_a_signal_whose_name_extends_its_own(amqp: Servers, unique: str) -> None:
    short = Signal(f'order_{unique}', Order)
    long = Signal(f'order_{unique}.big', Order)
    got_short, got_long = Collector(), Collector()
    async with billing(short, got_short)(bus=amqp.bus()), billing(long, got_long)(bus=amqp.bus()):
        sender = amqp.bus()
        await sender[long].send('shop', Order(2))
        await sender[short].send('big', Order(1))  # routing key order_x.big: the short one, from 'big'
        await got_long.wait(1)
        await got_short.wait(1)
        await asyncio.sleep(0.2)
    assert got_short.items == [(1, 'big', 1, False)]
    assert got_long.items == [(2, 'shop', 1, False)]


async def test_a_foreign_message_is_handled_or_dead_lettered_and_the_group_goes_on(
        amqp: Servers, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()
    bus = amqp.bus()
    store = f'{signal.name}@billing'
    async with billing(signal, got)(bus=bus):
        channel = await amqp.raw()
        # a 1.x peer: no label, no headers; the sender is in the routing key
        await channel.basic_publish(b'{"number": 1}', exchange=amqp.prefix, routing_key=f'{signal.name}.old')
        await channel.basic_publish(b'not json', exchange=amqp.prefix, routing_key=f'{signal.name}.bad')
        await channel.basic_publish(b'{"number": "x"}', exchange=amqp.prefix, routing_key=f'{signal.name}.bad')
        await amqp.bus()[signal].send('shop', Order(2))
        await got.wait(2)
        await eventually(lambda: _dead(bus, store, 2))
    assert sorted(got.items) == [(1, 'old', 1, False), (2, 'shop', 1, False)]
    letters = await bus.groups.dead_letters(store)
    assert {letter.body for letter in letters} == {b'not json', b'{"number": "x"}'}


async def test_first_is_now_on_rabbitmq_a_queue_gets_what_is_sent_after_it_is_bound(
        amqp: Servers, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()
    sender = amqp.bus()

    class Late(MicroAgent):
        @receiver(signal, group='late', start='first')
        async def on_order(self, order: Order) -> None:
            got.add(order.number)

    async with billing(signal, Collector())(bus=amqp.bus()):  # another group: RabbitMQ keeps 1 for it alone
        pass
    await sender[signal].send('shop', Order(1))
    async with Late(bus=amqp.bus()):
        await sender[signal].send('shop', Order(2))
        await got.wait(1)
        await asyncio.sleep(0.2)
    assert got.items == [2]  # not 1: it was sent before the 'late' group's queue existed


async def test_a_dead_connection_of_a_member_returns_what_it_fetched(amqp: Servers, unique: str) -> None:
    """In one process: the group transport's connection breaks while a handler runs; the signal
    comes back (redelivered) to the member once it reconnects."""
    signal = Signal(f'order_{unique}', Order)
    got = Collector()
    release = asyncio.Event()

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def on_order(self, order: Order, *, message: Message) -> None:
            got.add((order.number, message.redelivered))
            if not message.redelivered:
                await release.wait()

    bus = amqp.bus()
    async with Billing(bus=bus):
        await amqp.bus()[signal].send('shop', Order(7))
        await got.wait(1)
        transport = bus.groups.transport
        assert isinstance(transport, AMQPGroupTransport)
        connection = transport._link.connection
        assert isinstance(connection, aiormq.Connection)
        await connection.close()
        await got.wait(2, timeout=10)
        release.set()
    assert got.items[:2] == [(7, False), (7, True)]


async def test_a_quorum_store_dead_letters_a_signal_returned_past_its_delivery_limit(
        amqp: Servers, unique: str) -> None:
    """Members that lose their connection while holding a signal, more often than the bus's
    delivery limit: the signal is dead-lettered with that reason (not dropped by RabbitMQ)."""
    signal = Signal(f'order_{unique}', Order)
    got = Collector()
    release = asyncio.Event()

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def on_order(self, order: Order) -> None:
            got.add(order.number)
            await release.wait()  # not done before its connection breaks under it

    bus = amqp.bus(queue_type='quorum', delivery_limit=1)
    store = f'{signal.name}@billing'
    async with Billing(bus=bus):
        transport = bus.groups.transport
        assert isinstance(transport, AMQPGroupTransport)
        await amqp.bus()[signal].send('shop', Order(3))
        for times in (1, 2):
            await got.wait(times, timeout=10)
            connection = transport._link.connection
            assert isinstance(connection, aiormq.Connection)
            await connection.close()
        await eventually(lambda: _dead(bus, store, 1), timeout=10)
        (letter,) = await bus.groups.dead_letters(store)
        release.set()
    assert got.items == [3, 3]
    assert 'more than the delivery limit of 1' in letter.reason
    assert letter.envelope.headers is not None and 'x-delivery-count' not in letter.envelope.headers
