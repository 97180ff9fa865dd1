"""A receiver answers only to an inbox: a request whose reply address is a JetStream API subject or
a work queue's subject is dropped (one warning per signal and sender a minute), and nothing happens
there; a normal call still gets its answer."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import msgspec
import nats
import pytest

from microagent import MicroAgent, Queue, Signal, receiver
from microagent.backends.nats import NATSBroker, NATSSignalBus
from microagent.backends.nats.headers import REASON_HEADER
from microagent.backends.nats.layout import Layout
from microagent.message import REPLY_TO, REQUEST_ID
from tests.conformance.backends import delete_nats_streams
from tests.helpers import eventually
from tests.services import NATS_DSN

pytestmark = pytest.mark.nats


class Ask(msgspec.Struct):
    n: int


@pytest.fixture
async def broker() -> AsyncIterator[NATSBroker]:
    made = NATSBroker(NATS_DSN)
    yield made
    await made.close()
    await delete_nats_streams([made])


async def test_a_forged_reply_address_gets_no_answer(broker: NATSBroker, unique: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    signal = Signal(f'ask_{unique}', Ask, returns=int)
    queue = Queue(f'victim_{unique}')
    layout = Layout.of(queue.name)
    await broker[queue].send({'job': 1})
    handled: list[int] = []

    class Answering(MicroAgent):
        @receiver(signal)
        async def double(self, ask: Ask) -> int:
            handled.append(ask.n)
            return ask.n * 2

    bus = NATSSignalBus(NATS_DSN, prefix=f'T{unique}')
    client = await nats.connect(NATS_DSN)
    try:
        js = client.jetstream()
        await js.publish(layout.dead_subject, b'{"job": 0}', headers={REASON_HEADER: 'kept'})
        assert await broker.dead_letter_count(queue.name) == 1
        async with Answering(bus=bus):
            subject = f'T{unique}.{signal.name}.stranger'
            targets = [f'$JS.API.STREAM.PURGE.{layout.dead_stream}', layout.subject]
            for target in targets:  # as a NATS reply subject, and as the envelope's reply-to header
                await client.publish(subject, b'{"n": 1}', reply=target)
                await client.publish(subject, b'{"n": 1}', headers={REPLY_TO: target, REQUEST_ID: 'r1'})
            await client.flush()

            async def refused() -> bool:  # the forged requests came in (another connection: no order promised)
                return any('no inbox' in record.getMessage() for record in caplog.records)

            await eventually(refused)
            answers = await bus[signal].call('me', Ask(21), timeout=5)
        assert list(answers.values()) == [42]
        assert handled == [21]  # the forged requests never reached the handler
        assert await broker.dead_letter_count(queue.name) == 1
        assert await broker[queue].length() == 1
        dropped = [r.getMessage() for r in caplog.records if 'no inbox' in r.getMessage()]
        assert len(dropped) == 1 and signal.name in dropped[0] and 'stranger' in dropped[0]
    finally:
        await client.close()
        await bus.close()
