"""The memory backend: every bus and broker is isolated unless given the same hub, by object or by name."""
from __future__ import annotations

import msgspec

from microagent import MicroAgent, Queue, Signal, receiver
from microagent.backends.memory import MemoryBroker, MemoryHub, MemorySignalBus
from tests.helpers import Collector


class Ping(msgspec.Struct):
    n: int


async def _heard(listening: MemorySignalBus, sending: MemorySignalBus, signal: Signal[Ping, None]) -> list[int]:
    """What a receiver on ``listening`` gets of a ping sent on ``sending``: the ping is sent first, then a
    marker on ``listening`` itself; delivery keeps order, so a ping that crossed arrives before the marker."""
    got = Collector()

    class Listener(MicroAgent):
        @receiver(signal)
        async def on_ping(self, ping: Ping) -> None:
            got.add(ping.n)

    async with Listener(bus=listening):
        await sending[signal].send('test', Ping(n=1))
        await listening[signal].send('test', Ping(n=0))  # the marker
        items = await got.wait(1)
        while 0 not in items:
            items = await got.wait(len(items) + 1)
    return [n for n in items if n]


async def test_two_default_buses_do_not_hear_each_other(unique: str) -> None:
    signal = Signal(f'hub_private_{unique}', Ping)

    assert await _heard(MemorySignalBus(), MemorySignalBus(), signal) == []
    assert await _heard(MemorySignalBus('memory://'), MemorySignalBus('memory://'), signal) == []


async def test_buses_on_one_hub_hear_each_other(unique: str) -> None:
    signal = Signal(f'hub_shared_{unique}', Ping)
    hub = MemoryHub()

    assert await _heard(MemorySignalBus(hub=hub), MemorySignalBus(hub=hub), signal) == [1]
    assert await _heard(MemorySignalBus(f'memory://{unique}'), MemorySignalBus(f'memory://{unique}'), signal) == [1]


async def test_two_default_brokers_do_not_share_queues(unique: str) -> None:
    queue = Queue(f'hub_private_{unique}', Ping)
    first, second = MemoryBroker(), MemoryBroker('memory://')

    await first[queue].send(Ping(n=1))
    await first.transport.dead_letter(queue, (await first.transport.fetch(queue, 1, 0))[0], 'test')
    await first[queue].send(Ping(n=2))

    assert (await first[queue].length(), await first[queue].dead_letter_count()) == (1, 1)
    assert (await second[queue].length(), await second[queue].dead_letter_count()) == (0, 0)
    assert await second.transport.fetch(queue, 1, 0) == []


async def test_brokers_on_one_hub_share_queues(unique: str) -> None:
    queue = Queue(f'hub_shared_{unique}', Ping)
    hub = MemoryHub()
    by_object = MemoryBroker(hub=hub), MemoryBroker('memory://ignored-when-a-hub-is-given', hub=hub)
    by_name = MemoryBroker(f'memory://{unique}'), MemoryBroker(f'memory://{unique}')

    for sender, taker in (by_object, by_name):
        await sender[queue].send(Ping(n=1))
        [delivery] = await taker.transport.fetch(queue, 1, 0)
        assert msgspec.json.decode(delivery.envelope.body) == {'n': 1}
    assert by_name[0].hub is MemoryHub.named(unique) and by_object[0].hub is hub


def test_a_bus_and_a_broker_may_share_a_hub_and_its_repr_hides_passwords() -> None:
    hub = MemoryHub()
    assert MemorySignalBus(hub=hub).hub is MemoryBroker(hub=hub).hub is hub
    assert repr(MemoryBroker('memory://admin:s3cret@demo').hub) == '<MemoryHub memory://admin:***@demo>'
