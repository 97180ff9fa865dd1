"""NATS message sizes: a message the server would not take whole (body and headers over its
``max_payload``) is refused at once, naming the queue and the limits, and never costs the broker its
connection; should the server reject one anyway, that send fails and the broker goes on."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.backends.nats import NATSBroker, NATSSignalBus
from microagent.errors import ConnectionFailed, InvalidPayload
from tests.conformance.backends import delete_nats_streams
from tests.helpers import Collector
from tests.nats_support import PrivateNATS, private_nats
from tests.services import NATS_DSN

pytestmark = pytest.mark.nats

SMALL_PAYLOAD = 4096


@pytest.fixture
async def small() -> AsyncIterator[PrivateNATS]:
    """A private server whose max_payload is 4 KiB."""
    async with private_nats() as private:
        config = private.store / 'small.conf'
        config.write_text(f'max_payload: {SMALL_PAYLOAD}\n')
        await private.start('-c', str(config))
        yield private


async def _eight_of_eight(broker: NATSBroker, queue: Queue[Any]) -> None:
    """The same broker still sends 8 messages and its consumer gets all 8 (and what was there before)."""
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, **job: int) -> None:
            if job['n'] >= 0:
                got.add(job['n'])

    async with Worker(broker=broker):
        for n in range(8):
            await asyncio.wait_for(broker[queue].send({'n': n}), 5)
        assert sorted(await got.wait(8, timeout=10)) == list(range(8))


async def test_headers_pushing_a_message_over_max_payload_are_refused_at_once(small: PrivateNATS, unique: str) -> None:
    queue = Queue(f'small_{unique}')
    broker = NATSBroker(small.dsn, max_message_size=SMALL_PAYLOAD)
    try:
        body = {'pad': 'x' * (SMALL_PAYLOAD - 100)}  # the body fits max_message_size; with the headers it does not
        began = time.monotonic()
        with pytest.raises(InvalidPayload) as refused:
            await broker[queue].send(body)
        assert time.monotonic() - began < 2
        text = str(refused.value)
        assert f"queue '{queue.name}'" in text
        assert f'max_message_size {SMALL_PAYLOAD}' in text and f'server max_payload {SMALL_PAYLOAD}' in text
        assert await broker[queue].length() == 0  # nothing published
        await _eight_of_eight(broker, queue)
    finally:
        await broker.close()


# 1.1 MB of user headers, each value within the engine's 8 KiB: over the server's max_payload (1 MiB),
# and let through by the engine here (a larger max_message_size), so the backend's own check answers
HUGE = {f'h{i}': 'x' * 8_000 for i in range(140)}


async def test_a_huge_user_header_is_refused_and_the_broker_goes_on(unique: str) -> None:
    queue = Queue(f'big_header_{unique}')
    broker = NATSBroker(NATS_DSN, max_message_size=4 * 1024 * 1024)
    try:
        await broker[queue].send({'n': -1})  # connected and declared: the refusal is the size check's
        began = time.monotonic()
        with pytest.raises(InvalidPayload, match=rf"queue '{queue.name}'.*server max_payload 1048576"):
            await broker[queue].send({'n': -2}, headers=HUGE)
        assert time.monotonic() - began < 2
        assert await broker[queue].length() == 1
        await _eight_of_eight(broker, queue)
    finally:
        await broker.close()
        await delete_nats_streams([broker])


async def test_a_publish_the_server_rejects_fails_that_send_alone(small: PrivateNATS, unique: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The client believes a larger max_payload than the server enforces (a stale INFO): the server
    closes the connection on the message; that send fails fast, and the broker opens a new one."""
    queue = Queue(f'rejected_{unique}')
    broker = NATSBroker(small.dsn)
    try:
        await broker[queue].send({'n': -1})
        client = await broker.transport._link.client()
        monkeypatch.setattr(client, '_max_payload', 1 << 20)
        began = time.monotonic()
        with pytest.raises(ConnectionFailed, match='closed the connection'):
            await broker[queue].send({'pad': 'x' * 2 * SMALL_PAYLOAD})
        assert time.monotonic() - began < 5
        got = Collector()

        class Worker(MicroAgent):
            @consumer(queue)
            async def work(self, **job: Any) -> None:
                got.add(job.get('n'))

        async with Worker(broker=broker):
            for n in range(8):
                await asyncio.wait_for(broker[queue].send({'n': n}), 5)
            assert sorted(await got.wait(9, timeout=10)) == [-1, *range(8)]
    finally:
        await broker.close()


async def test_a_signal_with_a_huge_header_is_refused_and_the_bus_goes_on(unique: str) -> None:
    signal = Signal(f'big_signal_{unique}', providing_args=['n'])
    got = Collector()

    class Listening(MicroAgent):
        @receiver(signal)
        async def hear(self, **kwargs: Any) -> None:
            got.add(kwargs['n'])

    bus = NATSSignalBus(NATS_DSN, prefix=f'T{unique}', max_message_size=4 * 1024 * 1024)
    try:
        async with Listening(bus=bus):
            began = time.monotonic()
            with pytest.raises(InvalidPayload, match=rf"signal '{signal.name}'.*server max_payload 1048576"):
                await bus[signal].send('me', {'n': -1}, headers=HUGE)
            assert time.monotonic() - began < 2
            for n in range(8):
                await bus[signal].send('me', {'n': n})
            assert sorted(await got.wait(8)) == list(range(8))
    finally:
        await bus.close()
