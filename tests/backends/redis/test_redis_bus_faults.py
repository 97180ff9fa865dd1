"""The Redis bus under malformed pub/sub messages, injected with a plain redis-py client: each one
is a warning, and the signals and RPC calls right after it still work."""
from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pydantic
import pytest
from redis.asyncio import Redis

from microagent import MicroAgent, Signal, receiver
from microagent.backends.redis import RedisSignalBus
from tests.conformance.backends import REDIS_TEST_DSN
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.redis

DEEP = b'[' * 100_000  # msgspec raises RecursionError, not DecodeError


class Event(msgspec.Struct, frozen=True):
    n: int


class Answer(pydantic.BaseModel):
    n: int


@pytest.fixture
async def bus() -> AsyncIterator[RedisSignalBus]:
    # the 1.x wire: the legacy agents of these tests read the requests this bus sends
    bus = RedisSignalBus(REDIS_TEST_DSN, prefix=f'T{uuid.uuid4().hex[:12]}', wire='1.x')
    yield bus
    await bus.close()


async def test_malformed_signals_are_dropped_with_a_warning_and_the_reader_goes_on(
        bus: RedisSignalBus, raw: Redis, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    signal = Signal(name=f'fragile_{unique}', providing_args=['n'])
    got = Collector()

    class Listener(MicroAgent):
        @receiver(signal)
        async def on_event(self, **kwargs: Any) -> None:
            got.add(kwargs['n'])

    caplog.set_level(logging.WARNING)
    channel = f'{bus.prefix}:{signal.name}:rogue'
    async with Listener(bus=bus):
        await raw.publish(channel, b'{"n": "\xff\xfe"}')  # invalid UTF-8 in the body
        await raw.publish(f'{channel}2', DEEP)  # another sender: one warning per signal and sender a while
        await raw.publish(channel.encode() + b'\xff', b'{"n": 0}')  # invalid UTF-8 in the channel
        await raw.publish(f'{channel}\n', b'[')  # a control character in the sender
        await getattr(bus, signal.name).send('good', n=1)
        assert await got.wait(1) == [1]
    drops = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(drops) == 4
    invalid = f"Dropped signal {signal.name} from rogue: Invalid payload for signal '{signal.name}'"
    # msgspec before 0.23 let UnicodeDecodeError through (the codec wraps it); 0.23 reports it itself
    assert re.match(re.escape(invalid) + ': (UnicodeDecodeError|Invalid UTF-8)', drops[0]), drops[0]
    assert drops[1].startswith(f"{invalid.replace('from rogue', 'from rogue2')}: RecursionError")
    assert drops[2].startswith(f"Dropped message on channel b'{channel}\\xff': UnicodeDecodeError")
    assert drops[3].startswith(f"Dropped signal {signal.name} from 'rogue\\n': ")


async def test_malformed_answers_are_dropped_and_the_call_and_the_next_ones_work(
        bus: RedisSignalBus, raw: Redis, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    signal = Signal(f'asked_{unique}', Event, returns=Answer)
    pubsub = raw.pubsub()
    await pubsub.psubscribe(f'{bus.prefix}:{signal.name}:*')
    bad = [b'{"Legacy.n": "\xff"}', b'{"Legacy.n": ' + DEEP, b'{"Legacy.n": {"n": "x"}}', b'\xff', DEEP]

    async def legacy_agent() -> None:  # answers each request with every bad answer, then a good one
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is None:
                continue
            request_id = message['channel'].decode().partition('#')[2]
            answers = f'{bus.prefix}:response:{uuid.uuid4().hex}#{request_id}'
            for body in bad:
                await raw.publish(answers, body)
            n = msgspec.json.decode(message['data'])['n']
            await raw.publish(answers, msgspec.json.encode({'Legacy.n': {'n': n * 2}}))

    caplog.set_level(logging.WARNING)
    bus.limited.interval = 3600.0  # one warning line for the whole flood, however slow the machine
    agent = asyncio.create_task(legacy_agent())
    try:
        first = await bus[signal].call('caller', Event(n=1), timeout=5)
        second = await bus[signal].call('caller', Event(n=2), timeout=5)
    finally:
        agent.cancel()
        await asyncio.gather(agent, return_exceptions=True)
        await pubsub.aclose()
    assert (first, second) == ({'Legacy.n': Answer(n=2)}, {'Legacy.n': Answer(n=4)})
    # every bad answer was dropped; the warnings of a flood are limited: one line, the rest counted
    assert caplog.text.count(f'Dropped answer to {signal.name}') == 1


async def test_the_subscriber_survives_an_unexpected_error_and_subscribes_again(
        bus: RedisSignalBus, unique: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    signal = Signal(f'glitch_{unique}', Event)
    got = Collector()
    dispatch = bus.transport._dispatch
    failed = asyncio.Event()

    async def broken_once(channel: bytes, data: bytes) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError('a bug in the reading loop')
        await dispatch(channel, data)

    class Listener(MicroAgent):
        @receiver(signal)
        async def on_event(self, event: Event) -> None:
            got.add(event.n)

    monkeypatch.setattr(bus.transport, '_dispatch', broken_once)
    async with Listener(bus=bus):
        await bus[signal].send('x', Event(n=1))
        await failed.wait()

        async def received_again() -> bool:  # signals sent while it resubscribes are lost (pub/sub)
            await bus[signal].send('x', Event(n=2))
            return bool(got.items)
        await eventually(received_again, every=0.1)
    assert got.items[0] == 2
    assert 'subscriber failed; subscribing again (1)' in caplog.text
    assert 'RuntimeError: a bug in the reading loop' in caplog.text
