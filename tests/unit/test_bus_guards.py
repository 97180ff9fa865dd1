"""The bus's receive path against anything the wire may carry, and names that collide with the wire.

Messages are handed to the engine's callbacks directly (what every transport's reader does with
what it reads), written as 1.x channels for brevity: nothing a message holds may raise out of them
or stop later signals and RPC answers. (Channels that are not even text are the transports' to log.)
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microagent import DeclarationError, MicroAgent, Signal, receiver
from microagent.backends.memory import MemorySignalBus
from microagent.bus import AbstractSignalBus
from microagent.message import REPLY_TO, REQUEST_ID, Envelope
from tests.conformance.backends import BACKENDS
from tests.helpers import Collector, eventually


class Event(msgspec.Struct, frozen=True):
    user_id: int


EVENT = Signal('guards_event', Event)
LEGACY = Signal(name='guards_legacy', providing_args=['n'])
ASK = Signal('guards_ask', Event, returns=int)


@pytest.mark.parametrize('name', ['response', 'a:b', 'a#b', 'a*', 'a?', 'a[b]', 'a b', 'a\tb', 'a\n', ''])
def test_names_that_break_the_wire_are_refused_at_declaration(name: str) -> None:
    with pytest.raises(DeclarationError) as error:
        Signal(name, Event)
    assert f'signal name {name!r}' in str(error.value)
    assert name not in Signal.get_all()


def test_names_of_letters_digits_underscores_dashes_and_dots_stay_valid() -> None:
    assert Signal('user.created-v2_1', Event).name == 'user.created-v2_1'


async def test_a_sender_with_hash_is_refused_on_send_call_and_waiter() -> None:
    bound = MemorySignalBus('memory://guards-sender')[ASK]
    for attempt in (bound.send('a#1', Event(1)), bound.call('a#1', Event(1), timeout=1)):
        with pytest.raises(ValueError, match="signal 'guards_ask': sender 'a#1'"):
            await attempt
    with pytest.raises(ValueError, match="sender 'a#1'"):
        async with bound.waiter('a#1', Event(1), timeout=1):
            pass


def test_receiver_concurrency_must_be_a_positive_integer() -> None:
    for bad in (0, -1, 1.5, True, '2'):
        with pytest.raises(ValueError, match=r'Agent\.handler: concurrency must be an integer >= 1'):
            class Agent(MicroAgent):
                @receiver(EVENT, concurrency=bad)  # type: ignore[arg-type]
                async def handler(self, event: Event) -> None: ...


async def _check_survives(messages: list[tuple[bytes | str, bytes]]) -> None:
    """Dispatch ``messages`` (``{id}`` in a channel: the id of a waiting RPC call) to a bus with
    receivers and a call waiting; the call's real answer and a later signal still arrive."""
    bus = MemorySignalBus(f'memory://guards-{id(messages)}')
    got = Collector()

    class Agent(MicroAgent):
        @receiver(EVENT)
        async def on_event(self, event: Event) -> None:
            got.add(event)

        @receiver(LEGACY)
        async def on_legacy(self, **kwargs: Any) -> None:
            got.add(kwargs)

        @receiver(ASK)
        async def on_ask(self, event: Event) -> int:
            return event.user_id

    async with Agent(bus=bus):
        async with bus[ASK].waiter('prober', Event(user_id=7), timeout=5) as replies:
            request_id = next(iter(bus._pending))
            for channel, data in messages:
                if isinstance(channel, bytes):
                    channel = channel.decode('utf-8', 'replace')
                await _hand_over(bus, channel.replace('{id}', request_id), data)  # never raises
            # the real answer arrives (after any valid answer forged above)
            key = Agent.on_ask.__qualname__
            assert [reply async for reply in _until(replies, key, 7)][-1] == {key: 7}
        await bus[EVENT].send('prober', Event(user_id=99))
        await got.wait(1)
        await asyncio.sleep(0)
    assert Event(user_id=99) in got.items
    await bus.close()


async def _hand_over(bus: AbstractSignalBus, channel: str, data: bytes) -> None:
    """What a transport reading the 1.x ``channel`` hands the engine: a signal, a request or an answer."""
    name, _, rest = channel.removeprefix('PUBSUB:').partition(':')
    sender, _, request_id = rest.partition('#')
    if name == 'response':
        await bus._on_reply(Envelope(data, {REQUEST_ID: request_id}))
    else:
        bus.dispatch(name, sender, Envelope(data, {REQUEST_ID: request_id, REPLY_TO: 'x'} if request_id else None))


async def _until(replies: AsyncIterator[dict[str, int]], key: str, value: int) -> AsyncIterator[dict[str, int]]:
    async for reply in replies:
        yield reply
        if reply.get(key) == value:
            return


_CHANNELS = st.sampled_from([
    'PUBSUB:guards_event:x', 'PUBSUB:guards_legacy:x', 'PUBSUB:guards_ask:x#1',
    'PUBSUB:response:other#{id}', 'PUBSUB:response:other#nobody', 'PUBSUB:guards_event:',
])
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                     lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20)
_BODIES = st.binary(max_size=200) | _JSON.map(msgspec.json.encode) \
    | st.dictionaries(st.sampled_from(['Agent.on_ask', 'x']), _JSON).map(msgspec.json.encode)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_CHANNELS | st.binary(max_size=40), _BODIES), min_size=1, max_size=5))
def test_random_messages_never_raise_nor_stop_signals_and_answers(messages: list[tuple[bytes | str, bytes]]) -> None:
    logging.getLogger('microagent').setLevel(logging.CRITICAL)  # thousands of expected warnings
    try:
        asyncio.run(_check_survives(messages))
    finally:
        logging.getLogger('microagent').setLevel(logging.NOTSET)


@pytest.mark.parametrize(('channel', 'data', 'logged'), [
    ('PUBSUB:guards_event:x', b'{"user_id": "\xff"}', 'Dropped signal guards_event from x'),
    ('PUBSUB:guards_event:x', b'[' * 100_000, 'Dropped signal guards_event from x'),
    ('PUBSUB:guards_event:a\nb', b'[', r"Dropped signal guards_event from 'a\nb'"),
    ('PUBSUB:response:y#{id}', b'{"Agent.on_ask": ' + b'[' * 100_000, 'Dropped answer to guards_ask'),
    ('PUBSUB:response:y#{id}', b'{"Agent.on_ask": "\xff"}', 'Dropped answer to guards_ask'),
])
async def test_each_malformed_message_is_one_warning_and_the_bus_goes_on(
        channel: bytes | str, data: bytes, logged: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    await _check_survives([(channel, data)])
    assert logged in caplog.text


@pytest.mark.parametrize('backend_name', ['memory', 'redis'])
async def test_a_flood_to_a_busy_receiver_costs_queued_messages_not_tasks(backend_name: str) -> None:
    gate = asyncio.Event()
    entered = Collector()

    class Gated(MicroAgent):
        @receiver(EVENT, concurrency=2)
        async def on_event(self, event: Event) -> None:
            entered.add(event.user_id)
            await gate.wait()

    async with BACKENDS[backend_name]() as backend:
        bus = backend.bus()
        bus.max_backlog = 100
        async with Gated(bus=bus):
            before = len(asyncio.all_tasks())
            bound = backend.bus()[EVENT]
            for n in range(1000):
                await bound.send('x', Event(user_id=n))
            await entered.wait(2)
            await eventually(lambda: _at_least(bus, 100))
            tasks = len(asyncio.all_tasks()) - before
            gate.set()
            assert sorted(await entered.wait(1000, timeout=30)) == list(range(1000))
    assert tasks <= 3  # the two calls under way (and a memory transport's reader); the rest wait as messages


async def _at_least(bus: AbstractSignalBus, count: int) -> bool:
    return bus._backlog >= count
