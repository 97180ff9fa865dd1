"""Message signing (every backend): with ``signing_key=`` a bus or broker signs what it sends and
refuses what it receives unsigned or signed by a key it does not hold: a forged RPC answer or
``rpc-error`` header is ignored by the caller, a request replayed after its key was removed and an
unsigned signal are dropped before any receiver, an unsigned queue message is dead-lettered with the
reason; two keys rotate a key without a stop."""
from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.message import REPLY_TO, REQUEST_ID, RPC_ERROR, SIGNATURE, Envelope
from microagent.signing import SigningKeys, rejected
from tests.conformance.backends import Backend
from tests.helpers import Collector, eventually

OLD, NEW, OTHER = 'old-fleet-key-0123456789', 'new-fleet-key-0123456789', 'someone-elses-key-0123456789'


class Query(msgspec.Struct, frozen=True):
    user_id: int


class Job(msgspec.Struct, frozen=True):
    job_id: int


def refused(kind: str, name: str, reason: str) -> int:
    return rejected.get((kind, name, reason), 0)


async def more_refused(kind: str, name: str, reason: str, before: int) -> None:
    async def check() -> bool:
        return refused(kind, name, reason) > before
    await eventually(check, timeout=10)


class Spy:
    """A bus without a key, listening on a signal's transport: it sees each request as sent."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.seen: asyncio.Queue[Envelope] = asyncio.Queue()

    async def listen(self, name: str) -> None:
        async def deliver(signal: str, sender: str, envelope: Envelope) -> None:
            self.seen.put_nowait(envelope)
        await self.bus.transport.subscribe((name,), deliver)

    async def answer(self, request: Envelope, body: bytes, **headers: str) -> None:
        """Send an answer to the request's caller, past the engine, as an attacker would."""
        assert request.headers is not None
        answer = Envelope(body, {REQUEST_ID: request.headers[REQUEST_ID], **headers})
        await self.bus.transport.reply(request.headers[REPLY_TO], answer)


def counting(signal: Signal[Query, int], release: asyncio.Event, got: Collector) -> type[MicroAgent]:
    class Real(MicroAgent):
        @receiver(signal)
        async def count(self, query: Query) -> int:
            got.add(query.user_id)
            await release.wait()
            return query.user_id * 2
    return Real


@pytest.mark.parametrize('forgery', ['unsigned answer', 'answer by another key', 'rpc-error unsigned',
                                     'rpc-error added to a signed answer'])
async def test_a_forged_answer_or_error_is_ignored_and_the_real_answer_returned(backend: Backend, unique: str,
                                                                                forgery: str) -> None:
    signal = Signal(f'sig_count_{unique}', Query, returns=int)
    release, got = asyncio.Event(), Collector()
    spy = Spy(backend.bus())
    await spy.listen(signal.name)
    caller = backend.bus(signing_key=NEW)
    before = refused('answer', '', 'unsigned') + refused('answer', '', 'bad signature')
    async with counting(signal, release, got)(bus=backend.bus(signing_key=NEW)):
        call = asyncio.create_task(caller[signal].call('caller', Query(user_id=2), timeout=10))
        request = await asyncio.wait_for(spy.seen.get(), 10)
        await got.wait(1, timeout=10)  # the real receiver has it and holds its answer
        if forgery.startswith('rpc-error'):
            body, headers = b'{}', {RPC_ERROR: '{"Real.count": "forged failure"}'}
            if forgery.endswith('signed answer'):  # a genuine signature, then a header added
                assert request.headers is not None
                signed = SigningKeys(NEW).sign(Envelope(b'{}', {REQUEST_ID: request.headers[REQUEST_ID]}))
                assert signed.headers is not None
                headers[SIGNATURE] = signed.headers[SIGNATURE]
        else:
            body, headers = b'{"Forger.count": 666}', {}
            if forgery == 'answer by another key':
                assert request.headers is not None
                forged = SigningKeys(OTHER).sign(Envelope(body, {REQUEST_ID: request.headers[REQUEST_ID]}))
                assert forged.headers is not None
                headers[SIGNATURE] = forged.headers[SIGNATURE]
        await spy.answer(request, body, **headers)
        await eventually(lambda: _more(before), timeout=10)
        release.set()
        answers = await call
    assert list(answers.values()) == [4]  # the real receiver's, not the forger's


async def _more(before: int) -> bool:
    return refused('answer', '', 'unsigned') + refused('answer', '', 'bad signature') > before


async def test_a_request_replayed_after_its_key_was_removed_is_dropped(backend: Backend, unique: str) -> None:
    signal = Signal(f'sig_replay_{unique}', Query, returns=int)
    release, got = asyncio.Event(), Collector()
    release.set()
    spy = Spy(backend.bus())
    await spy.listen(signal.name)
    old_caller = backend.bus(signing_key=[OLD, NEW])  # rotation under way: the caller still signs with OLD,
    async with counting(signal, release, got)(bus=backend.bus(signing_key=[NEW, OLD])):  # the receiver with NEW
        assert list((await old_caller[signal].call('caller', Query(user_id=1), timeout=10)).values()) == [2]
    captured = await asyncio.wait_for(spy.seen.get(), 10)
    before = refused('signal', signal.name, 'bad signature')
    async with counting(signal, release, got)(bus=backend.bus(signing_key=NEW)):  # the old key removed
        await spy.bus.transport.publish(signal.name, 'caller', captured)
        await more_refused('signal', signal.name, 'bad signature', before)
        new_caller = backend.bus(signing_key=[NEW])
        assert list((await new_caller[signal].call('caller', Query(user_id=3), timeout=10)).values()) == [6]
    assert got.items == [1, 3]  # the replayed request never reached the receiver


async def test_an_unsigned_signal_is_dropped_and_a_signed_one_handled(backend: Backend, unique: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    signal = Signal(f'sig_event_{unique}', Query)
    got = Collector()

    class Listener(MicroAgent):
        @receiver(signal)
        async def heard(self, query: Query) -> None:
            got.add(query.user_id)

    before = refused('signal', signal.name, 'unsigned')
    async with Listener(bus=backend.bus(signing_key=[NEW, OLD])):
        await backend.bus()[signal].send('stranger', Query(user_id=1))
        await more_refused('signal', signal.name, 'unsigned', before)
        await backend.bus(signing_key=OLD)[signal].send('friend', Query(user_id=2))  # a second key verifies
        await backend.bus(signing_key=NEW)[signal].send('friend', Query(user_id=3))
        assert sorted(await got.wait(2, timeout=10)) == [2, 3]
    assert got.items.count(1) == 0
    assert f'Dropped signal {signal.name} from stranger: unsigned' in caplog.text
    assert NEW not in caplog.text and OLD not in caplog.text


async def test_an_unsigned_or_forged_queue_message_is_dead_lettered_and_signed_ones_handled(
        backend: Backend, unique: str) -> None:
    queue = Queue(f'sig_jobs_{unique}', Job)
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)

    broker = backend.broker(signing_key=[NEW, OLD])
    await broker[queue].declare()
    async with Worker(broker=broker):
        await backend.broker()[queue].send(Job(job_id=1))
        await backend.broker(signing_key=OTHER)[queue].send(Job(job_id=2))
        await backend.broker(signing_key=OLD)[queue].send(Job(job_id=3))
        await backend.broker(signing_key=NEW)[queue].send(Job(job_id=4))
        assert sorted(await got.wait(2, timeout=10)) == [3, 4]
        await eventually(lambda: _dead(broker, queue, 2), timeout=10)
    letters = sorted(await broker[queue].dead_letters(), key=lambda letter: letter.body)
    assert [msgspec.json.decode(letter.body)['job_id'] for letter in letters] == [1, 2]
    assert [letter.reason.partition(':')[0] for letter in letters] == ['unsigned', 'bad signature']
    assert sorted(got.items) == [3, 4]


async def _dead(broker: Any, queue: Queue[Any], expected: int) -> bool:
    return bool(await broker[queue].dead_letter_count() == expected)


async def test_a_grouped_receiver_checks_signatures_too(backend: Backend, unique: str) -> None:
    signal = Signal(f'sig_group_{unique}', Job)
    got = Collector()

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def bill(self, job: Job) -> None:
            got.add(job.job_id)

    member = backend.bus(signing_key=[NEW, OLD])
    async with Billing(bus=member):
        await backend.bus()[signal].send('intruder', Job(job_id=1))  # unsigned
        await backend.bus(signing_key=OTHER)[signal].send('intruder', Job(job_id=2))  # another fleet's key
        await backend.bus(signing_key=OLD)[signal].send('shop', Job(job_id=3))  # signed by a key it holds
        assert await got.wait(1) == [3]
        store = f'{signal.name}@billing'

        async def both_dead() -> bool:
            return bool(await member.groups.dead_letter_count(store) == 2)

        await eventually(both_dead, timeout=10)
        reasons = sorted(letter.reason.split(':')[0] for letter in await member.groups.dead_letters(store))
    assert reasons == ['bad signature', 'unsigned']
    assert got.items == [3]
