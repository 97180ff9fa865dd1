"""Signal groups on every backend: each group handles each signal once across its members, at
least once, durably; broadcast receivers still see every signal."""
from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import msgspec
import pytest

from microagent import Message, MicroAgent, Signal, receiver
from microagent.groups import GroupOptions
from tests.conformance.backends import Backend
from tests.helpers import Collector, eventually


class Order(msgspec.Struct, frozen=True):
    number: int


class Billed(msgspec.Struct, frozen=True):
    invoice: int


def member_classes(signal: Signal[Order, Any], got: dict[str, Collector]) -> dict[str, type[MicroAgent]]:
    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def on_order(self, order: Order) -> None:
            got['billing'].add(order.number)

    class Mailer(MicroAgent):
        group = 'mailer'  # the agent's default group

        @receiver(signal)
        async def on_order(self, order: Order) -> None:
            got['mailer'].add(order.number)

    class Audit(MicroAgent):
        @receiver(signal)
        async def on_order(self, order: Order) -> None:
            got['audit'].add(order.number)

    return {'billing': Billing, 'mailer': Mailer, 'audit': Audit}


async def test_each_group_handles_each_signal_once_and_broadcast_sees_all(backend: Backend, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = {name: Collector() for name in ('billing', 'mailer', 'audit')}
    classes = member_classes(signal, got)
    count = 10_000
    async with AsyncExitStack() as stack:
        for name, replicas in (('billing', 3), ('mailer', 2), ('audit', 1)):
            for _ in range(replicas):
                await stack.enter_async_context(classes[name](bus=backend.bus()))
        sender = backend.bus()
        for first in range(0, count, 100):  # a hundred sends under way at once
            await asyncio.gather(*(sender[signal].send('shop', Order(n)) for n in range(first, first + 100)))
        for collector in got.values():
            await collector.wait(count, timeout=60)
        await asyncio.sleep(0.2)  # a duplicate would come right behind: let it show
    for name, collector in got.items():
        assert Counter(collector.items) == Counter(range(count)), name


async def test_grouped_receiver_gets_sender_message_and_typed_model(backend: Backend, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()

    class Billing(MicroAgent):
        @receiver(signal, group=True)
        async def on_order(self, order: Order, *, sender: str, message: Message) -> None:
            got.add((order, sender, message.attempt, message.headers.get('tenant')))

    async with Billing(bus=backend.bus()):
        await backend.bus()[signal].send('shop', Order(1), headers={'tenant': 'acme'})
        (item,) = await got.wait(1)
    assert item == (Order(1), 'shop', 1, 'acme')


async def test_failure_is_retried_then_dead_lettered_and_requeue_delivers_it(backend: Backend, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    handled = Collector()
    attempts: Counter[int] = Counter()
    broken = {13}

    class Billing(MicroAgent):
        @receiver(signal, group='billing', max_retries=1, retry_delay=0.05)
        async def on_order(self, order: Order, *, message: Message) -> None:
            attempts[order.number] += 1
            if order.number in broken:
                raise RuntimeError(f'cannot bill {order.number}')
            handled.add((order.number, message.attempt))

    store = f'{signal.name}@billing'
    bus = backend.bus()
    async with Billing(bus=bus):
        sender = backend.bus()
        for number in (12, 13, 14):
            await sender[signal].send('shop', Order(number))
        await handled.wait(2)
        await eventually(lambda: _count(bus, store, 1), timeout=10)
        (letter,) = await bus.groups.dead_letters(store)
        assert msgspec.json.decode(letter.body) == {'number': 13}
        assert 'RuntimeError: cannot bill 13' in letter.reason
        assert letter.attempts == 2
        assert attempts[13] == 2

        broken.clear()
        assert await bus.groups.requeue_dead_letters(store) == 1
        await handled.wait(3, timeout=10)
        assert await bus.groups.dead_letter_count(store) == 0
    assert sorted(n for n, _ in handled.items) == [12, 13, 14]


async def _count(bus: Any, store: str, expected: int) -> bool:
    return bool(await bus.groups.dead_letter_count(store) == expected)


async def test_signals_sent_while_every_member_is_down_are_kept(backend: Backend, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def on_order(self, order: Order) -> None:
            got.add(order.number)

    async with Billing(bus=backend.bus()):
        pass  # the group exists from now on
    sender = backend.bus()
    for number in range(50):
        await sender[signal].send('shop', Order(number))
    async with Billing(bus=backend.bus()):
        await got.wait(50, timeout=10)
    assert sorted(got.items) == list(range(50))


async def test_past_its_retention_a_group_keeps_the_newest(backend: Backend, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def on_order(self, order: Order) -> None:
            got.add(order.number)

    def member_bus() -> Any:
        bus = backend.bus()
        bus.group_options = GroupOptions(max_length=10)
        return bus

    async with Billing(bus=member_bus()):
        pass
    sender = backend.bus()
    for number in range(30):
        await sender[signal].send('shop', Order(number))
    async with Billing(bus=member_bus()):
        await got.wait(10, timeout=10)
        await asyncio.sleep(0.2)  # nothing more comes
    assert sorted(got.items) == list(range(20, 30))


async def test_rpc_to_a_grouped_receiver_answers_once_per_group(backend: Backend, unique: str) -> None:
    signal = Signal(f'bill_{unique}', Order, returns=Billed)

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def bill(self, order: Order) -> Billed:
            return Billed(order.number * 10)

    class Ledger(MicroAgent):
        @receiver(signal, group='ledger')
        async def record(self, order: Order) -> Billed:
            return Billed(-order.number)

    async with AsyncExitStack() as stack:
        for agent in (Billing, Billing, Billing, Ledger):
            await stack.enter_async_context(agent(bus=backend.bus()))
        caller = backend.bus()
        answers: list[dict[str, Billed]] = []
        async with caller[signal].waiter('shop', Order(4), timeout=1.5) as waiting:
            async for answer in waiting:
                answers.append(answer)
    keys = Counter(key for answer in answers for key in answer)
    assert keys == Counter({'test_rpc_to_a_grouped_receiver_answers_once_per_group.<locals>.Billing.bill': 1,
                            'test_rpc_to_a_grouped_receiver_answers_once_per_group.<locals>.Ledger.record': 1})
    assert sorted(value.invoice for answer in answers for value in answer.values()) == [-4, 40]


async def test_a_group_named_by_true_takes_the_agents_name(backend: Backend, unique: str) -> None:
    signal = Signal(f'order_{unique}', Order)
    got = Collector()

    class Billing(MicroAgent):
        group = True

        @receiver(signal)
        async def on_order(self, order: Order) -> None:
            got.add(order.number)

        @receiver(signal, group=False)
        async def also_everywhere(self, order: Order) -> None:
            got.add(-order.number)

    bus = backend.bus()
    async with Billing(bus=bus, name='billing-service'):
        await backend.bus()[signal].send('shop', Order(5))
        await got.wait(2)
        assert await bus.groups.queue_depth(f'{signal.name}@billing-service') is not None
    assert sorted(got.items) == [-5, 5]


@pytest.mark.parametrize('group', ['bad name', '', 'x' * 101, 'new\nline'])
def test_a_bad_group_name_is_refused_when_declared(group: str) -> None:
    from microagent import DeclarationError

    signal = Signal('order_bad_group', Order)
    with pytest.raises(DeclarationError, match='group'):
        @receiver(signal, group=group)
        async def on_order(self: Any, order: Order) -> None: ...


def test_info_names_each_receivers_group() -> None:
    signal = Signal('order_info_groups', Order)

    class Billing(MicroAgent):
        group = True

        @receiver(signal, max_retries=5)
        async def bill(self, order: Order) -> None: ...

        @receiver(signal, group=False)
        async def audit(self, order: Order) -> None: ...

    from microagent.backends.memory import MemorySignalBus

    agent = Billing(bus=MemorySignalBus(), name='billing')
    receivers = {item['handler']: item for item in agent.info()['receivers']}
    assert receivers['Billing.bill']['group'] == 'billing'
    assert receivers['Billing.bill']['max_retries'] == 5
    assert 'group' not in receivers['Billing.audit']
    from microagent.contract.info import agent_info

    by_class = {item['handler']: item for item in agent_info(Billing)['receivers']}
    assert by_class['Billing.bill']['group'] == 'test_info_names_each_receivers_group.Billing'  # its qualified name

    from microagent.contract.asyncapi import asyncapi

    operations = asyncapi(Billing)['operations']
    assert operations['Billing.bill']['x-microagent']['group'] == 'test_info_names_each_receivers_group.Billing'
    assert 'group' not in operations['Billing.audit']['x-microagent']


async def test_a_request_to_a_foreign_reply_address_is_dead_lettered_unhandled(backend: Backend, unique: str) -> None:
    from microagent.message import Envelope, new_headers

    signal = Signal(f'bill_{unique}', Order, returns=Billed)
    handled = Collector()

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def bill(self, order: Order) -> Billed:
            handled.add(order.number)
            return Billed(order.number)

    member = backend.bus()
    async with Billing(bus=member):
        attacker = backend.bus()
        forged = Envelope(msgspec.json.encode(Order(1)),
                          new_headers(reply_to='work.queue.of.someone', request_id='f' * 32))
        await attacker.transport.publish(signal.name, 'attacker', forged)
        store = f'{signal.name}@billing'
        await eventually(lambda: _count(member, store, 1), timeout=10)
        (letter,) = await member.groups.dead_letters(store)
        assert 'is not the RPC answer address' in letter.reason
        assert await backend.bus()[signal].call('shop', Order(2), timeout=10) == {
            'test_a_request_to_a_foreign_reply_address_is_dead_lettered_unhandled.<locals>.Billing.bill': Billed(2)}
    assert handled.items == [2]
