"""Signal bus behaviour every backend must show (runs once per backend in tests/conformance/backends.py)."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import pydantic
import pytest

from microagent import InvalidPayload, MicroAgent, RemoteError, Signal, SignalNotFound, receiver
from microagent.message import Envelope, new_headers
from tests.conformance.backends import Backend
from tests.helpers import Collector, eventually


class Event(msgspec.Struct, frozen=True):
    user_id: int
    email: str


class Query(msgspec.Struct, frozen=True):
    user_id: int


async def test_typed_signal_reaches_every_receiver_with_the_model(backend: Backend, unique: str) -> None:
    signal = Signal(f'created_{unique}', Event)
    got = Collector()

    class First(MicroAgent):
        @receiver(signal)
        async def on_created(self, event: Event, *, sender: str) -> None:
            got.add(('first', event, sender))

    class Second(MicroAgent):
        @receiver(signal)
        async def on_created(self, event: Event) -> None:
            got.add(('second', event, None))

    async with First(bus=backend.bus()), Second(bus=backend.bus()):
        await backend.bus()[signal].send('users', Event(user_id=1, email='a@b.c'))
        items = await got.wait(2)
    assert sorted(items) == [('first', Event(1, 'a@b.c'), 'users'), ('second', Event(1, 'a@b.c'), None)]


async def test_legacy_signal_and_keyword_handlers(backend: Backend, unique: str) -> None:
    signal = Signal(name=f'legacy_{unique}', providing_args=['user_id'])
    got = Collector()

    class Legacy(MicroAgent):
        @receiver(signal)
        async def handler(self, **kwargs: Any) -> None:
            got.add(kwargs)

    async with Legacy(bus=backend.bus()):
        await getattr(backend.bus(), signal.name).send(sender='legacy_agent', user_id=7, extra='kept')
        (kwargs,) = await got.wait(1)
    assert kwargs == {'signal': signal, 'sender': 'legacy_agent', 'user_id': 7, 'extra': 'kept'}


async def test_rpc_call_returns_the_first_typed_answer(backend: Backend, unique: str) -> None:
    signal = Signal(f'count_{unique}', Query, returns=int)

    class Counter(MicroAgent):
        @receiver(signal)
        async def count(self, query: Query) -> int:
            return query.user_id * 10

    async with Counter(bus=backend.bus()):
        answer = await backend.bus()[signal].call('caller', Query(user_id=4), timeout=5)
    assert answer == {Counter.count.__qualname__: 40}


async def test_rpc_waiter_collects_answers_of_every_agent(backend: Backend, unique: str) -> None:
    signal = Signal(f'poll_{unique}', Query, returns=str)

    class Alpha(MicroAgent):
        @receiver(signal)
        async def answer(self, query: Query) -> str:
            return 'alpha'

    class Beta(MicroAgent):
        @receiver(signal)
        async def answer(self, query: Query) -> str:
            return 'beta'

    async with Alpha(bus=backend.bus()), Beta(bus=backend.bus()):
        answers: dict[str, str] = {}
        async with backend.bus()[signal].waiter('caller', Query(user_id=1), timeout=2) as replies:
            async for reply in replies:
                answers.update(reply)
                if len(answers) == 2:
                    break
    assert answers == {Alpha.answer.__qualname__: 'alpha', Beta.answer.__qualname__: 'beta'}


async def test_rpc_call_without_receiver_times_out(backend: Backend, unique: str) -> None:
    signal = Signal(f'nobody_{unique}', Query, returns=int)
    with pytest.raises(TimeoutError):
        await backend.bus()[signal].call('caller', Query(user_id=1), timeout=0.3)


async def test_rpc_answer_of_the_wrong_type_is_not_returned(backend: Backend, unique: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    signal = Signal(f'wrong_answer_{unique}', Query, returns=int)

    class Liar(MicroAgent):
        @receiver(signal)
        async def count(self, query: Query) -> Any:
            return 'not a number'

    async with Liar(bus=backend.bus()):
        # not returned: the caller learns at once which receiver answered wrongly (it used to time out)
        with pytest.raises(RemoteError, match=r'receiver \S*\bLiar\.count failed: invalid answer: .*Expected `int`'):
            await backend.bus()[signal].call('caller', Query(user_id=1), timeout=30)
    assert f"answer of signal 'wrong_answer_{unique}'" in caplog.text


async def test_invalid_payload_is_refused_on_send_and_nothing_is_published(
        backend: Backend, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    signal = Signal(f'strict_{unique}', Event)
    got = Collector()

    class Listener(MicroAgent):
        @receiver(signal)
        async def on_event(self, event: Event) -> None:
            got.add(event)

    caplog.set_level(logging.WARNING)
    async with Listener(bus=backend.bus()):
        bound = backend.bus()[signal]
        with pytest.raises(InvalidPayload) as error:
            await bound.send('x', Event(user_id='one', email='a@b.c'))  # type: ignore[arg-type]
        assert f"signal 'strict_{unique}'" in str(error.value) and '$.user_id' in str(error.value)
        with pytest.raises(InvalidPayload, match='email'):
            await bound.send('x', user_id=1)  # type: ignore[call-arg]  # 1.x keywords, validated too
        # the good message is a marker: sent after the refused ones on the same connection, it is
        # received after anything they might have published (handled, or dropped with a warning)
        await bound.send('x', Event(user_id=2, email='ok@b.c'))
        await got.wait(1)
    assert got.items == [Event(2, 'ok@b.c')]
    assert f'Dropped signal strict_{unique}' not in caplog.text


async def test_invalid_message_on_the_wire_is_logged_not_delivered(
        backend: Backend, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    signal = Signal(f'wire_{unique}', Event)
    got = Collector()

    class Listener(MicroAgent):
        @receiver(signal)
        async def on_event(self, event: Event) -> None:
            got.add(event)

    caplog.set_level(logging.WARNING)
    async with Listener(bus=backend.bus()):
        bus = backend.bus()
        await bus.transport.publish(signal.name, 'rogue', Envelope(b'{not json', new_headers()))
        # another sender: a flood from one sender on one signal is one line per 10 s (bus.limited)
        await bus.transport.publish(signal.name, 'rogue2', Envelope(b'{"user_id": "x", "email": "a@b.c"}'))
        await bus[signal].send('good', Event(user_id=3, email='a@b.c'))
        await got.wait(1)
        # no order across senders is promised (a cluster may publish them through different nodes)
        async def both_dropped() -> bool:
            return caplog.text.count(f'Dropped signal wire_{unique} from rogue') == 2  # rogue, rogue2

        await eventually(both_dropped)
    assert got.items == [Event(3, 'a@b.c')]
    assert '$.user_id' in caplog.text


async def test_a_failing_receiver_does_not_stop_the_others(backend: Backend, unique: str) -> None:
    signal = Signal(f'fragile_{unique}', Query)
    got = Collector()

    class Broken(MicroAgent):
        @receiver(signal)
        async def explode(self, query: Query) -> None:
            raise RuntimeError('boom')

        @receiver(signal)
        async def fine(self, query: Query) -> None:
            got.add(query.user_id)

    async with Broken(bus=backend.bus()):
        await backend.bus()[signal].send('x', Query(user_id=1))
        await backend.bus()[signal].send('x', Query(user_id=2))
        assert sorted(await got.wait(2)) == [1, 2]


async def test_unknown_signal_name_is_a_clear_error(backend: Backend, unique: str) -> None:
    with pytest.raises(SignalNotFound, match=f'no_such_{unique}'):
        getattr(backend.bus(), f'no_such_{unique}')


async def test_stopped_agent_receives_nothing(backend: Backend, unique: str) -> None:
    signal = Signal(f'after_stop_{unique}', Query)
    got = Collector()
    other = Collector()

    class Quitter(MicroAgent):
        @receiver(signal)
        async def on_query(self, query: Query) -> None:
            got.add(query.user_id)

    class Stayer(MicroAgent):
        @receiver(signal)
        async def on_query(self, query: Query) -> None:
            other.add(query.user_id)

    bus = backend.bus()
    quitter = Quitter(bus=bus)
    async with Stayer(bus=bus):
        async with quitter:
            await backend.bus()[signal].send('x', Query(user_id=1))
            await got.wait(1)
        await backend.bus()[signal].send('x', Query(user_id=2))
        await other.wait(2)
    assert got.items == [1]


async def test_a_receiver_over_its_timeout_is_cut_off_and_logged(
        backend: Backend, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    signal = Signal(f'slow_{unique}', Query, returns=str)
    cancelled = asyncio.Event()

    class Slow(MicroAgent):
        @receiver(signal, timeout=0.05)
        async def slow(self, query: Query) -> str:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return 'late'

        @receiver(signal)
        async def quick(self, query: Query) -> str:
            return 'quick'

    async with Slow(bus=backend.bus()):
        answers: dict[str, str] = {}
        async with backend.bus()[signal].waiter('caller', Query(user_id=1), timeout=1) as replies:
            async for reply in replies:
                answers.update(reply)
    assert answers == {Slow.quick.__qualname__: 'quick'}
    assert cancelled.is_set()
    assert f'Receiver {Slow.slow.__qualname__} of slow_{unique} timed out after 0.1s' in caplog.text


async def test_legacy_rpc_receiver_returning_nothing_answers_null(backend: Backend, unique: str) -> None:
    """As in 1.x: every receiver that completes answers, None included."""
    signal = Signal(name=f'notify_{unique}', providing_args=['user_id'])

    class Notifier(MicroAgent):
        @receiver(signal)
        async def notify(self, **kwargs: Any) -> None:
            pass

    async with Notifier(bus=backend.bus()):
        answer = await getattr(backend.bus(), signal.name).call('caller', user_id=1, timeout=5)
    assert answer == {Notifier.notify.__qualname__: None}


class Total(pydantic.BaseModel):
    user_id: int
    total: int


async def test_rpc_with_a_pydantic_answer_model(backend: Backend, unique: str) -> None:
    signal = Signal(f'total_{unique}', Query, returns=Total)

    class Accountant(MicroAgent):
        @receiver(signal)
        async def total(self, query: Query) -> Total:
            return Total(user_id=query.user_id, total=query.user_id * 3)

    async with Accountant(bus=backend.bus()):
        bound = backend.bus()[signal]
        answer = await bound.call('caller', Query(user_id=2), timeout=5)
        async with bound.waiter('caller', Query(user_id=5), timeout=5) as replies:
            waited = [await anext(replies)]
    assert answer == {Accountant.total.__qualname__: Total(user_id=2, total=6)}
    assert waited == [{Accountant.total.__qualname__: Total(user_id=5, total=15)}]


async def test_a_receiver_runs_at_most_concurrency_calls_and_handles_every_signal(
        backend: Backend, unique: str) -> None:
    signal = Signal(f'busy_{unique}', Query)
    got = Collector()
    running: list[int] = []
    most = 0

    class Slow(MicroAgent):
        @receiver(signal, concurrency=2)
        async def work(self, query: Query) -> None:
            nonlocal most
            running.append(query.user_id)
            most = max(most, len(running))
            await asyncio.sleep(0.005)  # slow work: the others arrive meanwhile
            running.remove(query.user_id)
            got.add(query.user_id)

    bus = backend.bus()
    bus.max_backlog = 4  # the reading loop waits for the receiver too
    async with Slow(bus=bus):
        bound = backend.bus()[signal]
        for n in range(40):
            await bound.send('x', Query(user_id=n))
        items = await got.wait(40, timeout=15)
    assert sorted(items) == list(range(40))
    assert most == 2


async def test_receivers_that_send_and_call_while_bounded_do_not_deadlock(backend: Backend, unique: str) -> None:
    """A receiver with one slot calls another receiver of the same bus, and sends to itself."""
    ask = Signal(f'ask_{unique}', Query)
    lookup = Signal(f'lookup_{unique}', Query, returns=int)
    got = Collector()

    class Chain(MicroAgent):
        @receiver(ask, concurrency=1)
        async def on_ask(self, query: Query) -> None:
            answer = await self.bus[lookup].call('chain', query, timeout=5)
            got.add(answer[Chain.on_lookup.__qualname__])
            if query.user_id < 20:
                await self.bus[ask].send('chain', Query(user_id=query.user_id + 10))

        @receiver(lookup, concurrency=1)
        async def on_lookup(self, query: Query) -> int:
            return query.user_id * 2

    bus = backend.bus()
    bus.max_backlog = 1  # the reading loop is held as soon as anything waits
    async with Chain(bus=bus):
        bound = backend.bus()[ask]
        for n in range(5):
            await bound.send('x', Query(user_id=n))
        items = await got.wait(15, timeout=20)
    assert sorted(items) == sorted(2 * (n + step) for n in range(5) for step in (0, 10, 20))
