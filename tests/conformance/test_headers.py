"""Headers end to end, on every backend: what a handler that names ``message: Message`` sees, ids kept
across retries, conversations and traces carried through signals and queues, user headers, RPC
error answers (runs once per backend in tests/conformance/backends.py)."""
from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from microagent import AbstractQueueBroker, Message, MicroAgent, Queue, RemoteError, Signal, consumer, receiver
from tests.conformance.backends import Backend
from tests.helpers import Collector, eventually


class Job(msgspec.Struct, frozen=True):
    job_id: int


async def test_message_id_is_kept_across_a_retry_and_attempts_are_counted(backend: Backend, unique: str) -> None:
    queue = Queue(f'hdr_retry_{unique}', Job)
    seen = Collector()

    class Worker(MicroAgent):
        @consumer(queue, max_retries=2, retry_delay=0.01)
        async def work(self, job: Job, message: Message) -> None:
            seen.add(message)
            if message.attempt < 3:
                raise RuntimeError('not yet')

    broker = backend.broker()
    before = time.time()
    async with Worker(broker=broker):
        await broker[queue].send(Job(job_id=1))
        first, second, third = await seen.wait(3)
    assert first.message_id == second.message_id == third.message_id
    assert [first.attempt, second.attempt, third.attempt] == [1, 2, 3]
    assert not first.redelivered
    assert before - 0.001 <= first.sent_at <= time.time()
    assert first.correlation_id == first.message_id  # sent outside any handler: a new conversation
    assert first.trace_id is not None and len(first.trace_id) == 32


async def test_a_dead_letter_keeps_its_id_and_headers_when_requeued(backend: Backend, unique: str) -> None:
    queue = Queue(f'hdr_dead_{unique}', Job)
    seen = Collector()

    class Worker(MicroAgent):
        @consumer(queue, max_retries=0)
        async def work(self, job: Job, message: Message) -> None:
            seen.add(message)
            if len(seen.items) == 1:
                raise RuntimeError('first time only')

    broker = backend.broker()
    async with Worker(broker=broker):
        await broker[queue].send(Job(job_id=1), headers={'tenant': 'acme'})
        (failed,) = await seen.wait(1)
        await eventually(lambda: _dead_letters(broker, queue, 1))
        (letter,) = await broker[queue].dead_letters()
        assert letter.envelope.headers is not None and letter.envelope.headers['message-id'] == failed.message_id
        assert await broker[queue].requeue_dead_letters() == 1
        _, again = await seen.wait(2)
    assert again.message_id == failed.message_id and again.headers == {'tenant': 'acme'}
    assert again.attempt == 1  # requeued as a fresh delivery


async def _dead_letters(broker: AbstractQueueBroker, queue: Queue[Job], count: int) -> bool:
    return await broker[queue].dead_letter_count() == count


async def test_a_conversation_goes_from_a_signal_through_two_queues(backend: Backend, unique: str) -> None:
    signal = Signal(f'hdr_start_{unique}', Job)
    first, second = Queue(f'hdr_first_{unique}', Job), Queue(f'hdr_second_{unique}', Job)
    seen = Collector()

    class Chain(MicroAgent):
        @receiver(signal)
        async def started(self, job: Job, *, message: Message) -> None:
            seen.add(('signal', message))
            await self.broker[first].send(job)

        @consumer(first)
        async def step(self, job: Job, message: Message) -> None:
            seen.add(('first', message))
            await self.broker[second].send(job)

        @consumer(second)
        async def done(self, job: Job, message: Message) -> None:
            seen.add(('second', message))

    bus = backend.bus()
    async with Chain(bus=bus, broker=backend.broker()):
        await backend.bus()[signal].send('starter', Job(job_id=1))
        items = dict(await seen.wait(3))
    origin = items['signal']
    assert items['first'].correlation_id == items['second'].correlation_id == origin.message_id
    assert items['first'].trace_id == items['second'].trace_id == origin.trace_id
    assert len({origin.message_id, items['first'].message_id, items['second'].message_id}) == 3
    assert len({m.traceparent for m in items.values()}) == 3  # one span per message, in one trace


async def test_user_headers_arrive_on_signals_and_queues(backend: Backend, unique: str) -> None:
    signal = Signal(f'hdr_user_{unique}', Job)
    queue = Queue(f'hdr_user_{unique}', Job)
    seen = Collector()

    class Listener(MicroAgent):
        @receiver(signal)
        async def heard(self, job: Job, *, message: Message) -> None:
            seen.add(('signal', dict(message.headers)))

        @consumer(queue)
        async def work(self, job: Job, *, message: Message) -> None:
            seen.add(('queue', dict(message.headers)))

    bus, broker = backend.bus(), backend.broker()
    async with Listener(bus=bus, broker=broker):
        await backend.bus()[signal].send('web', Job(job_id=1), headers={'tenant': 'acme', 'X-Source': 'web'})
        await broker[queue].send(Job(job_id=2), headers={'tenant': 'acme'})
        await broker[queue].send_many([Job(job_id=3)], headers={'tenant': 'globex'})
        items = await seen.wait(3)
    assert sorted(items, key=str) == sorted([
        ('signal', {'tenant': 'acme', 'X-Source': 'web'}),
        ('queue', {'tenant': 'acme'}),
        ('queue', {'tenant': 'globex'}),
    ], key=str)


async def test_a_message_released_on_stop_comes_back_redelivered_with_its_id(backend: Backend, unique: str) -> None:
    queue = Queue(f'hdr_release_{unique}', Job)
    stuck, seen = Collector(), Collector()

    class Stuck(MicroAgent):
        @consumer(queue, concurrency=1, prefetch=0)
        async def work(self, job: Job, message: Message) -> None:
            stuck.add(message)
            await asyncio.Event().wait()  # cancelled by the stop, which gives the message back

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job, message: Message) -> None:
            seen.add(message)

    broker = backend.broker()
    await broker[queue].send(Job(job_id=1))
    agent = Stuck(broker=broker)
    await agent.start()
    (first,) = await stuck.wait(1)
    await agent.stop(grace=0.05)
    async with Worker(broker=backend.broker()):
        (again,) = await seen.wait(1)
    assert again.message_id == first.message_id
    assert (first.redelivered, again.redelivered) == (False, True)
    assert again.attempt == 1  # a release is not an attempt


async def test_a_failing_rpc_receiver_answers_at_once_with_its_name(backend: Backend, unique: str) -> None:
    signal = Signal(f'hdr_rpc_{unique}', Job, returns=int)

    class Broken(MicroAgent):
        @receiver(signal)
        async def count(self, job: Job) -> int:
            raise LookupError(f'no job {job.job_id}')

    class Working(MicroAgent):
        @receiver(signal)
        async def count(self, job: Job) -> int:
            return job.job_id

    async with Broken(bus=backend.bus()):
        with pytest.raises(RemoteError) as caught:
            await backend.bus()[signal].call('caller', Job(job_id=7), timeout=60)
    assert (caught.value.signal, caught.value.receiver) == (signal.name, Broken.count.__qualname__)
    assert caught.value.reason == 'LookupError: no job 7'
    assert isinstance(caught.value, Exception) and Broken.count.__qualname__ in str(caught.value)

    bus = backend.bus()  # the receivers of one bus answer together: the failure comes with the answer
    async with Broken(bus=bus), Working(bus=bus), \
            backend.bus()[signal].waiter('caller', Job(job_id=8), timeout=60) as answers:
        got = await anext(answers)
    assert got == {Working.count.__qualname__: 8}
    assert [(error.receiver, error.reason) for error in answers.errors] == [
        (Broken.count.__qualname__, 'LookupError: no job 8')]
