"""``bus['name']`` and ``broker['name']`` work as ``bus.name`` and ``broker.name`` do (1.x code and
names read from configuration index them): the same bound objects, messages that arrive, and a
clear error naming what is not declared."""
from __future__ import annotations

from typing import Any

import msgspec
import pytest

from microagent import Exchange, MicroAgent, Queue, QueueNotFound, Signal, SignalNotFound, consumer, receiver
from microagent.broker import BoundExchange, BoundQueue
from microagent.bus import BoundSignal
from microagent.testing import TestGroup
from microagent.testing.mocks import BrokerMock, BusMock


class Invoice(msgspec.Struct, frozen=True):
    number: str


INVOICES = Queue('acme_invoices', Invoice)
CREATED = Signal('byname_user_created', providing_args=['user_id'])
PUSH = Exchange('byname_push', 'topic')
ANDROID = Queue('byname_android', exchange=PUSH, topics=['*.android'])


class Accounting(MicroAgent):
    @consumer(INVOICES)
    async def book(self, invoice: Invoice) -> None: ...

    @receiver(CREATED)
    async def welcome(self, signal: Signal[Any, Any], sender: str, **kwargs: Any) -> None: ...

    @consumer(ANDROID)
    async def push(self, **kwargs: Any) -> None: ...


async def test_a_queue_indexed_by_name_sends_and_shows_its_name() -> None:
    async with TestGroup(Accounting) as group:
        bound = group.broker['acme_invoices']
        assert repr(bound) == repr(group.broker.acme_invoices) == repr(group.broker[INVOICES])
        assert 'acme_invoices' in repr(bound)
        assert type(bound) is BoundQueue and bound.queue is INVOICES
        await bound.send({'number': 'A-1'})
        await group.broker['acme_invoices'].send(Invoice(number='A-2'))
        assert await group.handler(Accounting.book).wait(2) == [Invoice('A-1'), Invoice('A-2')]


async def test_a_signal_indexed_by_name_sends_1x_keywords() -> None:
    async with TestGroup(Accounting) as group:
        bound = group.bus['byname_user_created']
        assert type(bound) is BoundSignal and bound.signal is CREATED
        assert repr(bound) == repr(group.bus.byname_user_created)
        await bound.send('test', user_id=7)
        [event] = await group.handler(Accounting.welcome).wait()
        assert event == {'signal': CREATED, 'sender': 'test', 'user_id': 7}


async def test_an_exchange_indexed_by_name_publishes_as_attribute_access_does() -> None:
    async with TestGroup(Accounting) as group:
        bound = group.broker['byname_push']
        assert type(bound) is BoundExchange and type(group.broker.byname_push) is BoundExchange
        assert await bound.send({'x': 1}, topic='1.android') >= 1
        assert await group.handler(Accounting.push).wait() == [{'x': 1}]


async def test_an_undeclared_name_is_a_lookup_error_naming_it() -> None:
    async with TestGroup(Accounting) as group:
        with pytest.raises(SignalNotFound, match="No such signal 'user_craeted'"):
            group.bus['user_craeted']
        with pytest.raises(QueueNotFound, match="No such queue 'acme_invoice'"):
            group.broker['acme_invoice']
        with pytest.raises(TypeError, match=r'broker\[\.\.\.\] takes a Queue or the name of one, got 3'):
            group.broker[3]  # type: ignore[call-overload]


async def test_mocks_index_by_name_too() -> None:
    bus, broker = BusMock(), BrokerMock()
    await bus['byname_user_created'].send('test', user_id=1)
    await broker['acme_invoices'].send({'number': 'A-1'})
    bus.byname_user_created.send.assert_awaited_with('test', user_id=1)
    broker[INVOICES].send.assert_awaited_with({'number': 'A-1'})
