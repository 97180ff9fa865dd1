"""Queue broker behaviour every backend must show (runs once per backend in tests/conformance/backends.py)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from microagent import DeclarationError, Exchange, InvalidPayload, MicroAgent, Queue, QueueNotFound, consumer
from microagent.message import Envelope
from tests.conformance.backends import Backend
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
        await broker.transport.put(queue, [Envelope(b'{broken'), Envelope(b'[1, 2]'), Envelope(b'{"job_id": "seven"}')])
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
    assert await broker.publish(f'push_{unique}', Job(job_id=1), routing_key='7.android') >= 1
    assert await broker.publish(f'push_{unique}', Job(job_id=2), routing_key='7.ios') >= 1
    await eventually(lambda: _length(broker, everything, 2))
    assert await broker[android].length() == 1


async def test_fanout_exchange_reaches_every_bound_queue(backend: Backend, unique: str) -> None:
    first = Queue(f'fan1_{unique}', Job, exchange=f'fan_{unique}')
    second = Queue(f'fan2_{unique}', Job, exchange=f'fan_{unique}')
    broker = backend.broker()
    await broker[first].declare()
    await broker[second].declare()
    assert await broker.publish(f'fan_{unique}', Job(job_id=1)) >= 1
    await eventually(lambda: _length(broker, second, 1))
    assert await broker[first].length() == 1
    with pytest.raises(LookupError, match='no_exchange'):
        await broker.publish(f'no_exchange_{unique}', Job(job_id=1))


async def test_publish_reaches_the_queues_bound_on_the_server_not_every_declared_one(
        backend: Backend, unique: str) -> None:
    exchange = Exchange(f'only_{unique}', 'fanout')
    bound = Queue(f'bound_{unique}', Job, exchange=exchange)
    stray = Queue(f'stray_{unique}', Job, exchange=exchange)  # declared in this process, bound nowhere
    got = Collector()

    class Worker(MicroAgent):
        @consumer(bound)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)

    producer = backend.broker()
    async with Worker(broker=backend.broker()):  # consuming binds the queue on the hub or server
        await producer.publish(exchange.name, Job(job_id=1))
        assert await got.wait(1) == [1]
    assert await producer[stray].length() == 0


async def test_1x_exchange_attribute_sends_with_a_topic(backend: Backend, unique: str) -> None:
    android = Queue(name=f'a19_{unique}', exchange=f'push19_{unique}', topics=['*.android'])
    ios = Queue(name=f'i19_{unique}', exchange=f'push19_{unique}', topics=['*.ios'])
    broker = backend.broker()
    await broker[android].declare()
    await broker[ios].declare()
    await getattr(broker, f'push19_{unique}').send({'text': 'hi'}, topic='1.android')
    await eventually(lambda: _length(broker, android, 1))
    assert await broker[ios].length() == 0
    with pytest.raises(TypeError, match=f"exchange 'push19_{unique}': unknown send option\\(s\\) 'delay'"):
        await getattr(broker, f'push19_{unique}').send({'text': 'hi'}, delay=1)


def test_an_exchange_name_has_one_type(backend: Backend, unique: str) -> None:
    Queue(f'fanq_{unique}', Job, exchange=f'typed_{unique}')
    with pytest.raises(DeclarationError, match=f"queue 'topq_{unique}': exchange 'typed_{unique}' is already "
                                               'declared with another contract: a fanout exchange'):
        Queue(f'topq_{unique}', Job, exchange=f'typed_{unique}', topics=['a.*'])
    with pytest.raises(DeclarationError, match=f"exchange 'typed_{unique}'"):
        Exchange(f'typed_{unique}', 'topic')
    with pytest.raises(DeclarationError, match='topics need a topic exchange'):
        Queue(f'topq2_{unique}', Job, exchange=Exchange(f'typed_{unique}'), topics=['a.*'])


async def test_a_queue_without_topics_on_a_topic_exchange_gets_every_key(backend: Backend, unique: str) -> None:
    events = Exchange(f'events_{unique}', 'topic')
    audit = Queue(f'audit_{unique}', Job, exchange=events)
    users = Queue(f'users_{unique}', Job, exchange=f'events_{unique}', topics=['user.*'])
    broker = backend.broker()
    await broker[audit].declare()
    await broker[users].declare()
    await broker.publish(events.name, Job(job_id=1), routing_key='user.created')
    await broker.publish(events.name, Job(job_id=2), routing_key='order.paid')
    await eventually(lambda: _length(broker, audit, 2))
    assert await broker[users].length() == 1


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
        await broker.transport.put(queue, [Envelope(msgspec.json.encode(Job(job_id=2, text='y' * 2000)))])
        await broker[queue].send(Job(job_id=3))
        await got.wait(1)
        await eventually(lambda: _count(broker, queue, 1))
    (letter,) = await broker[queue].dead_letters()
    assert 'exceeds 1000' in letter.reason
    assert got.items == [Job(3)]


async def test_unknown_queue_name_is_a_clear_error(backend: Backend, unique: str) -> None:
    with pytest.raises(QueueNotFound, match=f'nope_{unique}'):
        getattr(backend.broker(), f'nope_{unique}')


async def test_delayed_send_arrives_not_before_the_delay(backend: Backend, unique: str) -> None:
    queue = Queue(f'later_{unique}', Job)
    loop = asyncio.get_running_loop()
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add((job.job_id, loop.time()))

    broker = backend.broker()
    delay = 0.5
    async with Worker(broker=broker):
        sent_at = loop.time()
        await broker[queue].send(Job(job_id=1), delay=delay)
        await broker[queue].send_many([Job(job_id=2), Job(job_id=3)], delay=delay)
        await broker[queue].send(Job(job_id=4))
        items = await got.wait(4)
    assert items[0][0] == 4  # sent last, without a delay: handled first
    assert sorted(job_id for job_id, _ in items[1:]) == [1, 2, 3]
    assert all(at - sent_at >= delay for job_id, at in items if job_id != 4)
    assert got.items[0][1] - sent_at < delay  # the undelayed one did not wait (not an upper bound on the others)


async def test_delayed_message_starts_at_attempt_one(backend: Backend, unique: str) -> None:
    queue = Queue(f'fresh_{unique}', Job)
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue, max_retries=1, retry_delay=0.01)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)
            raise RuntimeError('fails every time')

    broker = backend.broker()
    async with Worker(broker=broker):
        await broker[queue].send(Job(job_id=1), delay=0.05)
        await got.wait(2)  # attempt 1, then its one retry
        await eventually(lambda: _count(broker, queue, 1))
    (letter,) = await broker[queue].dead_letters()
    assert letter.attempts == 2


async def test_send_refuses_unknown_or_unhonoured_keywords(backend: Backend, unique: str) -> None:
    queue = Queue(f'kw_{unique}', Job)
    bound = backend.broker()[queue]
    with pytest.raises(TypeError, match=f"queue 'kw_{unique}': unknown send option\\(s\\) 'nope'"):
        await bound.send(Job(job_id=1), nope=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=f"queue 'kw_{unique}': unknown send option\\(s\\) 'delay_s'"):
        await bound.send_many([Job(job_id=1)], delay_s=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"queue 'kw_{unique}': delay must be a finite number of seconds .*, got -1"):
        await bound.send(Job(job_id=1), delay=-1)
    if backend.engine != 'amqp':
        for keyword in ({'properties': {'priority': 1}}, {'exchange': 'nope'}, {'topic': 'a.b'}):
            with pytest.raises(TypeError, match=f"queue 'kw_{unique}': .* cannot honour send option"):
                await bound.send(Job(job_id=1), **keyword)
    assert await bound.length() == 0


def test_consumer_option_errors_come_when_the_class_is_defined(backend: Backend, unique: str) -> None:
    queue = Queue(f'opt_{unique}', Job)
    with pytest.raises(TypeError, match=r"Worker\.work .*unknown option 'max_retry'; did you mean 'max_retries'"):
        class Worker(MicroAgent):
            @consumer(queue, max_retry=10)  # type: ignore[call-overload, untyped-decorator]
            async def work(self, job: Job) -> None: ...
    with pytest.raises(ValueError, match=r'Other\.work: concurrency must be an integer >= 1'):
        class Other(MicroAgent):
            @consumer(queue, concurrency='4')  # type: ignore[call-overload, untyped-decorator]
            async def work(self, job: Job) -> None: ...
