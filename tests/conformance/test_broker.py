"""Queue broker behaviour every backend must show (runs once per backend in tests/backends.py)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from microagent import InvalidPayload, MicroAgent, Queue, QueueNotFound, consumer
from tests.backends import Backend
from tests.helpers import Collector, eventually


class Job(msgspec.Struct, frozen=True):
    job_id: int
    text: str = ''


@dataclass
class LegacyDTO:
    job_id: int


async def test_typed_message_is_consumed_as_the_model(backend: Backend, unique: str) -> None:
    queue = Queue(f'jobs_{unique}', Job)
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add(job)

    broker = backend.broker()
    async with Worker(broker=broker):
        await broker[queue].send(Job(job_id=1, text='hi'))
        assert await got.wait(1) == [Job(1, 'hi')]
    assert await broker[queue].length() == 0


async def test_legacy_queue_dict_and_dto_class(backend: Backend, unique: str) -> None:
    plain = Queue(name=f'plain_{unique}')
    with_dto = Queue(name=f'dto_{unique}')
    got = Collector()

    class Legacy(MicroAgent):
        @consumer(plain)
        async def plain_handler(self, **kwargs: Any) -> None:
            got.add(('plain', {k: v for k, v in kwargs.items() if k != 'amqp'}))

        @consumer(with_dto, dto_class=LegacyDTO, dto_name='obj')
        async def dto_handler(self, obj: LegacyDTO, **kwargs: Any) -> None:
            got.add(('dto', obj, kwargs['job_id']))

    broker = backend.broker()
    async with Legacy(broker=broker):
        await getattr(broker, plain.name).send({'text': 'Hello world!'})
        await getattr(broker, with_dto.name).send({'job_id': 5})
        items = await got.wait(2)
    assert sorted(items, key=str) == sorted([('plain', {'text': 'Hello world!'}), ('dto', LegacyDTO(5), 5)], key=str)


async def test_send_many_and_length(backend: Backend, unique: str) -> None:
    queue = Queue(f'batch_{unique}', Job)
    bound = backend.broker()[queue]
    await bound.send_many([Job(job_id=i) for i in range(25)])
    await bound.send_many([])
    assert await bound.length() == 25


async def test_invalid_payload_on_send_raises_and_nothing_is_queued(backend: Backend, unique: str) -> None:
    queue = Queue(f'strict_{unique}', Job)
    bound = backend.broker()[queue]
    with pytest.raises(InvalidPayload) as error:
        await bound.send(Job(job_id='x'))  # type: ignore[arg-type]
    assert f"queue 'strict_{unique}'" in str(error.value) and '$.job_id' in str(error.value)
    with pytest.raises(InvalidPayload):
        await bound.send_many([Job(job_id=1), Job(job_id='y')])  # type: ignore[arg-type]
    assert await bound.length() == 0


async def test_invalid_message_on_receive_is_dead_lettered_and_consumer_goes_on(
        backend: Backend, unique: str) -> None:
    queue = Queue(f'wire_{unique}', Job)
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add(job)

    broker = backend.broker()
    async with Worker(broker=broker):
        await broker.put(queue, [b'{broken', b'[1, 2]', b'{"job_id": "seven"}'])
        await broker[queue].send(Job(job_id=8))
        assert await got.wait(1) == [Job(8)]
        await eventually(lambda: _count(broker, queue, 3))
    # concurrent handling promises no order of dead letters: find each by its body
    letters = {letter.body: letter for letter in await broker[queue].dead_letters()}
    assert sorted(letters) == sorted([b'{broken', b'[1, 2]', b'{"job_id": "seven"}'])
    assert all(f"queue 'wire_{unique}'" in letter.reason for letter in letters.values())
    assert 'malformed' in letters[b'{broken'].reason.lower() or 'json' in letters[b'{broken'].reason.lower()
    assert '$.job_id' in letters[b'{"job_id": "seven"}'].reason
    assert all(letter.attempts == 1 for letter in letters.values())


async def _count(broker: Any, queue: Queue[Any], expected: int) -> bool:
    return bool(await broker[queue].dead_letter_count() == expected)


async def _length(broker: Any, queue: Queue[Any], expected: int) -> bool:
    return bool(await broker[queue].length() == expected)


async def test_failing_handler_is_retried_then_succeeds(backend: Backend, unique: str) -> None:
    queue = Queue(f'flaky_{unique}', Job)
    attempts = Collector()

    class Flaky(MicroAgent):
        @consumer(queue, max_retries=3, retry_delay=0.01)
        async def work(self, job: Job) -> None:
            attempts.add(job.job_id)
            if len(attempts.items) < 3:
                raise RuntimeError('temporary')

    broker = backend.broker()
    async with Flaky(broker=broker):
        await broker[queue].send(Job(job_id=1))
        await attempts.wait(3)
        await eventually(lambda: _length(broker, queue, 0))
    assert attempts.items == [1, 1, 1]
    assert await broker[queue].dead_letter_count() == 0


async def test_always_failing_handler_is_dead_lettered_with_reason_and_attempts(
        backend: Backend, unique: str) -> None:
    queue = Queue(f'doomed_{unique}', Job)
    attempts = Collector()

    class Doomed(MicroAgent):
        @consumer(queue, max_retries=2, retry_delay=0.01)
        async def work(self, job: Job) -> None:
            attempts.add(job.job_id)
            raise ValueError(f'cannot do job {job.job_id}')

    broker = backend.broker()
    async with Doomed(broker=broker):
        await broker[queue].send(Job(job_id=9))
        await eventually(lambda: _count(broker, queue, 1))
    assert len(attempts.items) == 3
    (letter,) = await broker[queue].dead_letters()
    assert letter.attempts == 3
    assert letter.reason == 'ValueError: cannot do job 9'
    assert msgspec.json.decode(letter.body, type=Job) == Job(9)


async def test_timed_out_handler_is_retried_and_dead_lettered(backend: Backend, unique: str) -> None:
    queue = Queue(f'slow_{unique}', Job)

    class Slow(MicroAgent):
        @consumer(queue, timeout=0.05, max_retries=1, retry_delay=0.01)
        async def work(self, job: Job) -> None:
            await asyncio.sleep(10)

    broker = backend.broker()
    async with Slow(broker=broker):
        await broker[queue].send(Job(job_id=1))
        await eventually(lambda: _count(broker, queue, 1))
    (letter,) = await broker[queue].dead_letters()
    assert letter.reason.startswith('timeout') and letter.attempts == 2


async def test_dead_letters_can_be_requeued_and_handled(backend: Backend, unique: str) -> None:
    queue = Queue(f'requeue_{unique}', Job)
    healed = asyncio.Event()
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue, max_retries=0)
        async def work(self, job: Job) -> None:
            if not healed.is_set():
                raise RuntimeError('down')
            got.add(job)

    broker = backend.broker()
    async with Worker(broker=broker):
        await broker[queue].send_many([Job(job_id=1), Job(job_id=2)])
        await eventually(lambda: _count(broker, queue, 2))
        healed.set()
        assert await broker[queue].requeue_dead_letters() == 2
        assert sorted(j.job_id for j in await got.wait(2)) == [1, 2]
    assert await broker[queue].dead_letter_count() == 0


async def test_concurrency_bounds_handlers_running_at_once(backend: Backend, unique: str) -> None:
    queue = Queue(f'bounded_{unique}', Job)
    running = 0
    peak = 0
    done = Collector()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=3)
        async def work(self, job: Job) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            done.add(job.job_id)

    broker = backend.broker()
    await broker[queue].send_many([Job(job_id=i) for i in range(30)])
    async with Worker(broker=broker):
        await done.wait(30)
    assert peak == 3
    assert sorted(done.items) == list(range(30))


async def test_stop_waits_for_handlers_in_flight_and_leaves_the_rest_queued(backend: Backend, unique: str) -> None:
    queue = Queue(f'graceful_{unique}', Job)
    started = asyncio.Event()
    release = asyncio.Event()
    finished = Collector()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=1)
        async def work(self, job: Job) -> None:
            started.set()
            await release.wait()
            finished.add(job.job_id)

    broker = backend.broker()
    worker = Worker(broker=broker)
    await broker[queue].send_many([Job(job_id=i) for i in range(5)])
    await worker._start()
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(worker.stop(grace=5))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # stop waits for the handler under way
    release.set()
    await stopping
    assert finished.items == [0]
    assert await broker[queue].length() == 4


async def test_exchange_routes_by_topic(backend: Backend, unique: str) -> None:
    android = Queue(f'android_{unique}', Job, exchange=f'push_{unique}', topics=['*.android'])
    everything = Queue(f'all_{unique}', Job, exchange=f'push_{unique}', topics=['#'])
    broker = backend.broker()
    await broker[android].declare()
    await broker[everything].declare()
    assert await broker.publish(f'push_{unique}', Job(job_id=1), routing_key='7.android') == 2
    assert await broker.publish(f'push_{unique}', Job(job_id=2), routing_key='7.ios') == 1
    await eventually(lambda: _length(broker, everything, 2))
    assert await broker[android].length() == 1


async def test_fanout_exchange_reaches_every_bound_queue(backend: Backend, unique: str) -> None:
    first = Queue(f'fan1_{unique}', Job, exchange=f'fan_{unique}')
    second = Queue(f'fan2_{unique}', Job, exchange=f'fan_{unique}')
    broker = backend.broker()
    await broker[first].declare()
    await broker[second].declare()
    assert await broker.publish(f'fan_{unique}', Job(job_id=1)) == 2
    await eventually(lambda: _length(broker, second, 1))
    assert await broker[first].length() == 1
    with pytest.raises(LookupError, match='no_exchange'):
        await broker.publish(f'no_exchange_{unique}', Job(job_id=1))


async def test_oversized_message_is_refused_on_send_and_dead_lettered_on_receive(
        backend: Backend, unique: str) -> None:
    queue = Queue(f'big_{unique}', Job)
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add(job)

    broker = backend.broker(max_message_size=1000)
    with pytest.raises(InvalidPayload, match='exceeds 1000'):
        await broker[queue].send(Job(job_id=1, text='x' * 2000))
    async with Worker(broker=broker):
        await broker.put(queue, [msgspec.json.encode(Job(job_id=2, text='y' * 2000))])
        await broker[queue].send(Job(job_id=3))
        await got.wait(1)
        await eventually(lambda: _count(broker, queue, 1))
    (letter,) = await broker[queue].dead_letters()
    assert 'exceeds 1000' in letter.reason
    assert got.items == [Job(3)]


async def test_unknown_queue_name_is_a_clear_error(backend: Backend, unique: str) -> None:
    with pytest.raises(QueueNotFound, match=f'nope_{unique}'):
        getattr(backend.broker(), f'nope_{unique}')
