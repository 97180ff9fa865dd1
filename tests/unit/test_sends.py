"""Declared sends: validated at class definition, in info(), and checked when the agent sends."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec
import pytest

from microagent import (
    DeclarationError,
    Exchange,
    MicroAgent,
    Queue,
    Signal,
    UndeclaredSend,
    consumer,
    on,
    periodic,
    receiver,
)
from microagent.backends.memory import MemoryBroker, MemorySignalBus
from microagent.sends import Sendable
from tests.helpers import Collector, eventually


class Ping(msgspec.Struct):
    n: int


ping = Signal('sends_ping', Ping)
pong = Signal('sends_pong', Ping)
ask = Signal('sends_ask', Ping, returns=int)
jobs = Queue('sends_jobs', Ping)
other_jobs = Queue('sends_other_jobs', Ping)
fanout = Exchange('sends_fanout')
fanned = Queue('sends_fanned', Ping, exchange=fanout)


class Declared(MicroAgent):
    sends: ClassVar[tuple[Sendable, ...]] = (pong, jobs, fanout)  # annotated: a subclass extends it

    @receiver(ping)
    async def on_ping(self, payload: Ping) -> None:
        await self.bus[pong].send('declared', payload)  # declared
        await self.bus[ask].send('declared', payload)  # undeclared: warns once
        await self.broker[other_jobs].send(payload)  # undeclared queue
        self.settings['done'].add(payload.n)


class Extended(Declared):
    sends = (other_jobs,)


class Strict(MicroAgent):
    sends = (pong,)
    strict_sends = True

    @receiver(ping)
    async def on_ping(self, payload: Ping) -> None:
        try:
            await self.bus[ask].send('strict', payload)
        except UndeclaredSend as exc:
            self.settings['done'].add(str(exc))


class Silent(MicroAgent):
    """A 1.x agent: no sends at all, never checked."""

    @consumer(jobs)
    async def work(self, payload: Ping) -> None:
        await self.bus[ask].send('silent', payload)
        await self.broker[other_jobs].send(payload)
        self.settings['done'].add(payload.n)


async def until(check: Callable[[], bool]) -> None:
    async def holds() -> bool:
        return check()
    await eventually(holds)


def backends(unique: str) -> tuple[MemorySignalBus, MemoryBroker]:
    return MemorySignalBus(f'memory://{unique}'), MemoryBroker(f'memory://{unique}')


def test_sends_are_merged_with_the_bases_in_order() -> None:
    assert Declared.sends == (pong, jobs, fanout)
    merged: tuple[Any, ...] = Extended.sends  # the class attribute holds the bases' sends too
    assert merged == (pong, jobs, fanout, other_jobs)
    assert Silent.sends == ()


@pytest.mark.parametrize('value', [pong, 'sends_pong', (pong, 'sends_jobs'), (pong, Ping), 42])
def test_anything_but_declarations_is_refused_naming_the_agent(value: Any) -> None:
    with pytest.raises(DeclarationError, match=r'Bad\.sends'):
        type('Bad', (MicroAgent,), {'sends': value})


def test_info_lists_the_sends_and_their_schemas() -> None:
    info = Extended.info(Extended(bus=MemorySignalBus('memory://x')))
    assert info['sends'] == {'signals': ['sends_pong'], 'queues': ['sends_jobs', 'sends_other_jobs'],
                             'exchanges': ['sends_fanout']}
    assert set(info['signals']) == {'sends_ping', 'sends_pong'}
    assert info['signals']['sends_pong']['payload']['title'] == 'Ping'
    assert set(info['queues']) == {'sends_jobs', 'sends_other_jobs'}
    assert Silent.info(Silent(broker=MemoryBroker('memory://x')))['sends'] == {
        'signals': [], 'queues': [], 'exchanges': []}


async def test_an_undeclared_send_warns_once_per_name(unique: str, caplog: pytest.LogCaptureFixture) -> None:
    bus, broker = backends(unique)
    done: set[int] = set()
    agent = Declared(bus=bus, broker=broker, settings={'done': done})
    pongs = Collector()

    class Listener(MicroAgent):
        @receiver(pong)
        async def got(self, payload: Ping) -> None:
            pongs.add(payload.n)

    caplog.set_level(logging.WARNING)
    async with agent, Listener(bus=bus):
        await bus[ping].send('test', Ping(n=1))
        await bus[ping].send('test', Ping(n=2))
        await pongs.wait(2)
    warnings = [r.getMessage() for r in caplog.records if 'not in Declared.sends' in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert any("signal 'sends_ask'" in text for text in warnings)
    assert any("queue 'sends_other_jobs'" in text for text in warnings)
    assert done == {1, 2}  # a warning never stops the send


async def test_strict_sends_raise_naming_agent_and_signal(unique: str) -> None:
    bus, _ = backends(unique)
    done: set[str] = set()
    probe = Collector()

    class Probe(MicroAgent):
        @receiver(ask)
        async def got(self, payload: Ping) -> None:
            probe.add(payload)

    async with Strict(bus=bus, settings={'done': done}), Probe(bus=bus):
        await bus[ping].send('test', Ping(n=1))
        await bus[pong].send('test', Ping(n=1))  # a test outside any agent is never checked
        await until(lambda: bool(done))
    [message] = done
    assert "Strict sends signal 'sends_ask'" in message and 'strict_sends' in message
    assert not probe.items  # the strict send did not go out


async def test_agents_without_sends_are_silent(unique: str, caplog: pytest.LogCaptureFixture) -> None:
    bus, broker = backends(unique)
    done: set[int] = set()
    caplog.set_level(logging.WARNING)
    async with Silent(bus=bus, broker=broker, settings={'done': done}):
        await broker[jobs].send(Ping(n=3))
        await until(lambda: bool(done))
    assert not [r for r in caplog.records if '.sends' in r.getMessage()]


async def test_timers_and_hooks_send_as_their_agent(unique: str, caplog: pytest.LogCaptureFixture) -> None:
    bus, _ = backends(unique)
    sent = Collector()

    class Ticking(MicroAgent):
        sends = (pong,)

        @on('post_start')
        async def hello(self) -> None:
            await self.bus[ask].send('ticking', Ping(n=0))

        @periodic(period=0.01, timeout=1)
        async def tick(self) -> None:
            await self.bus[ping].send('ticking', Ping(n=1))
            sent.add(1)

    caplog.set_level(logging.WARNING)
    async with Ticking(bus=bus):
        await sent.wait(2)
    texts = [r.getMessage() for r in caplog.records if 'not in Ticking.sends' in r.getMessage()]
    assert len(texts) == 2 and {"signal 'sends_ask'" in t for t in texts} == {True, False}
