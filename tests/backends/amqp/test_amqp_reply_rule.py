"""A receiver on AMQPSignalBus answers only to the reply queue of a bus on its prefix: a request
naming another queue (a work queue) is dropped, with at most one warning a minute per sender."""
from __future__ import annotations

import logging

import msgspec
import pytest
from pamqp import commands as spec

from microagent import MicroAgent, Signal, receiver
from tests.amqp_support import Servers
from tests.helpers import eventually

pytestmark = pytest.mark.amqp


class Ping(msgspec.Struct, frozen=True):
    n: int


def _dropped_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if 'is not the reply queue of a bus' in r.getMessage()]


async def test_an_answer_never_lands_in_a_work_queue_and_a_normal_call_is_answered(
        amqp: Servers, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    signal = Signal(f'double_{unique}', Ping, returns=int)
    work = f'work_{unique}'
    handled: list[int] = []

    class Doubler(MicroAgent):
        @receiver(signal)
        async def double(self, ping: Ping) -> int:
            handled.append(ping.n)
            return ping.n * 2

    channel = await amqp.raw()
    await channel.queue_declare(work, exclusive=True)  # goes with the test's raw connection
    async with Doubler(bus=amqp.bus()):
        for n in range(5):  # a forged request: answer into the work queue
            await channel.basic_publish(
                f'{{"n": {n}}}'.encode(), exchange=amqp.prefix, routing_key=f'{signal.name}.intruder',
                properties=spec.Basic.Properties(reply_to=work, correlation_id=f'req{n}', message_type=signal.name))

        async def seen() -> bool:
            stored = (await channel.queue_declare(work, passive=True)).message_count
            return bool(_dropped_lines(caplog)) or bool(stored)
        await eventually(seen)
        answers = await amqp.bus()[signal].call('caller', Ping(n=21), timeout=5)  # after the forged ones
    assert answers == {Doubler.double.__qualname__: 42}
    assert (await channel.queue_declare(work, passive=True)).message_count == 0
    assert handled == [21]
    lines = _dropped_lines(caplog)
    assert len(lines) == 1  # five dropped, one line: rate-limited per sender
    assert 'intruder' in lines[0] and work in lines[0] and signal.name in lines[0]


async def test_reply_refuses_an_address_that_is_not_a_bus_reply_queue(amqp: Servers, unique: str) -> None:
    transport = amqp.bus_transport()
    caller = amqp.bus_transport()
    assert transport.is_reply_address(caller.reply_to)
    assert not transport.is_reply_address(f'work_{unique}')
    assert not transport.is_reply_address(f'other.bus.{caller.uid}')  # another prefix
    assert not transport.is_reply_address(caller.reply_to + '.x')
