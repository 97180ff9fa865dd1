"""What AMQPSignalBus puts on RabbitMQ: the topic exchange named by the prefix, routing keys
``{name}.{sender}``, one exclusive queue per bus, RPC answers sent back to the caller's queue only."""
from __future__ import annotations

import asyncio
from typing import Any

import aiormq
import msgspec
import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from microagent import MicroAgent, Signal, receiver
from tests.amqp_support import Servers
from tests.helpers import Collector

pytestmark = pytest.mark.amqp


class Ping(msgspec.Struct, frozen=True):
    n: int


async def _tap(amqp: Servers, binding: str) -> Collector:
    """A plain aiormq queue bound to the test's exchange: what any AMQP client would see."""
    got = Collector()
    channel = await amqp.raw()
    await channel.exchange_declare(amqp.prefix, exchange_type='topic', durable=True)
    declared = await channel.queue_declare('', exclusive=True, auto_delete=True)
    assert declared.queue
    await channel.queue_bind(declared.queue, amqp.prefix, routing_key=binding)

    async def on_message(message: DeliveredMessage) -> None:
        got.add(message)

    await channel.basic_consume(declared.queue, on_message, no_ack=True)
    return got


async def test_signal_is_published_on_the_prefix_exchange_as_name_dot_sender(amqp: Servers, unique: str) -> None:
    signal = Signal(f'ping_{unique}', Ping)
    tap = await _tap(amqp, f'{signal.name}.#')
    await amqp.bus()[signal].send('user.agent', Ping(n=1))
    (message,) = await tap.wait(1)
    assert message.routing_key == f'{signal.name}.user.agent'
    assert message.body == b'{"n":1}'
    assert message.header.properties.content_type == 'application/json'


async def test_a_plain_amqp_publisher_reaches_receivers_with_its_sender(amqp: Servers, unique: str) -> None:
    signal = Signal(name=f'legacy_{unique}', providing_args=['n'])
    got = Collector()

    class Legacy(MicroAgent):
        @receiver(signal)
        async def handler(self, **kwargs: Any) -> None:
            got.add((kwargs['sender'], kwargs['n']))

    async with Legacy(bus=amqp.bus()):
        channel = await amqp.raw()
        await channel.basic_publish(b'{"n": 5}', exchange=amqp.prefix, routing_key=f'{signal.name}.old_agent')
        assert await got.wait(1) == [('old_agent', 5)]


async def test_each_bus_reads_an_exclusive_queue_that_goes_away_with_it(amqp: Servers, unique: str) -> None:
    signal = Signal(f'owned_{unique}', Ping)

    class Agent(MicroAgent):
        @receiver(signal)
        async def handler(self, ping: Ping) -> None: ...

    bus = amqp.bus()
    async with Agent(bus=bus):
        channel = await amqp.raw()
        with pytest.raises(aiormq.ChannelLockedResource):  # exclusive to the bus's connection
            await channel.queue_declare(bus.transport.queue_name, passive=True)
    await bus.close()
    channel = await amqp.raw()
    with pytest.raises(aiormq.ChannelNotFoundEntity):
        await channel.queue_declare(bus.transport.queue_name, passive=True)


async def test_rpc_request_names_the_caller_queue_and_answers_go_only_there(amqp: Servers, unique: str) -> None:
    signal = Signal(f'double_{unique}', Ping, returns=int)
    tap = await _tap(amqp, '#')  # sees every message that crosses the exchange

    class Doubler(MicroAgent):
        @receiver(signal)
        async def double(self, ping: Ping) -> int:
            return ping.n * 2

    first, second = amqp.bus(), amqp.bus()
    async with Doubler(bus=amqp.bus()):
        one, two = await asyncio.gather(first[signal].call('a', Ping(n=1), timeout=5),
                                        second[signal].call('b', Ping(n=2), timeout=5))
    assert (one, two) == ({Doubler.double.__qualname__: 2}, {Doubler.double.__qualname__: 4})
    requests = sorted(await tap.wait(2), key=lambda m: m.routing_key or '')
    assert [m.routing_key for m in requests] == [f'{signal.name}.a', f'{signal.name}.b']  # no answer here
    assert [m.header.properties.reply_to for m in requests] == [first.transport.queue_name, second.transport.queue_name]
    assert all(m.header.properties.correlation_id for m in requests)


async def test_the_routing_key_decides_the_signal_and_a_disagreeing_label_is_dropped(
        amqp: Servers, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    victim, other = Signal(f'victim_{unique}', Ping), Signal(f'other_{unique}', Ping)
    dotted = Signal(f'victim_{unique}.sub', Ping)
    got = Collector()

    class Agent(MicroAgent):
        @receiver(victim)
        async def on_victim(self, ping: Ping, *, sender: str) -> None:
            got.add(('victim', ping.n, sender))

        @receiver(other)
        async def on_other(self, ping: Ping, *, sender: str) -> None:
            got.add(('other', ping.n, sender))

        @receiver(dotted)
        async def on_dotted(self, ping: Ping, *, sender: str) -> None:
            got.add(('dotted', ping.n, sender))

    async with Agent(bus=amqp.bus()):
        channel = await amqp.raw()
        await channel.basic_publish(b'{"n": 1}', exchange=amqp.prefix, routing_key=f'{other.name}.rogue',
                                    properties=spec.Basic.Properties(message_type=victim.name))
        await channel.basic_publish(b'{"n": 2}', exchange=amqp.prefix, routing_key=f'{dotted.name}.plain')
        await channel.basic_publish(b'{"n": 3}', exchange=amqp.prefix, routing_key=f'{victim.name}.sub.x',
                                    properties=spec.Basic.Properties(message_type=victim.name))
        await amqp.bus()[other].send('good', Ping(n=4))
        items = await got.wait(3)
    assert sorted(items) == [('dotted', 2, 'plain'), ('other', 4, 'good'), ('victim', 3, 'sub.x')]
    assert f'routed {other.name}.rogue labelled {victim.name}: its routing key is not of signal' in caplog.text
