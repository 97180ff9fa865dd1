"""Middlewares on every backend: what they see of each handling (and how it ended) and of each send,
the order they run in, and the headers they set (runs once per backend in tests/conformance/backends.py)."""
from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from microagent import (
    Exchange,
    Handling,
    InvalidArgument,
    InvalidPayload,
    Message,
    MicroAgent,
    Middleware,
    Next,
    Outcome,
    Queue,
    Sending,
    Signal,
    consumer,
    periodic,
    receiver,
)
from tests.conformance.backends import Backend, inject_raw
from tests.helpers import Collector


class Job(msgspec.Struct, frozen=True):
    job_id: int


class Recorder(Middleware):
    """Records each handling when it ends, and each send, with what it saw."""

    def __init__(self, label: str = 'r', order: list[str] | None = None) -> None:
        self.label = label
        self.order = order if order is not None else []
        self.handled = Collector()
        self.sent = Collector()

    async def handle(self, handling: Handling, call_next: Next) -> Any:
        self.order.append(f'{self.label} in')
        try:
            return await call_next()
        finally:
            self.order.append(f'{self.label} out')
            self.handled.add((handling.kind, handling.name, handling.handler, handling.outcome, handling.attempt,
                              handling.timed_out, type(handling.error).__name__ if handling.error else None,
                              handling.retry_delay is not None))

    async def send(self, sending: Sending, call_next: Next) -> Any:
        for headers in sending.headers:
            headers['x-seen-by'] = self.label
        self.sent.add((sending.kind, sending.name, len(sending.headers)))
        return await call_next()


async def test_a_consumer_s_outcomes_are_seen_ok_retried_dead_lettered(backend: Backend, unique: str) -> None:
    queue = Queue(f'mw_outcomes_{unique}', Job)
    recorder = Recorder()

    class Worker(MicroAgent):
        @consumer(queue, max_retries=1, retry_delay=0.01)
        async def work(self, job: Job) -> None:
            if job.job_id == 2:
                raise RuntimeError('cursed')

    broker = backend.broker()
    async with Worker(broker=broker, middlewares=[recorder]):
        await broker[queue].send(Job(job_id=1))
        await broker[queue].send(Job(job_id=2))
        seen = await recorder.handled.wait(3)
    name, handler = queue.name, 'Worker.work'
    assert sorted(seen, key=lambda item: (item[4], item[3])) == [
        ('consumer', name, handler, Outcome.OK, 1, False, None, False),
        ('consumer', name, handler, Outcome.RETRIED, 1, False, 'RuntimeError', True),
        ('consumer', name, handler, Outcome.DEAD_LETTERED, 2, False, 'RuntimeError', False),
    ]


async def test_a_consumer_that_times_out_is_seen_timed_out_and_retried(backend: Backend, unique: str) -> None:
    queue = Queue(f'mw_timeout_{unique}', Job)
    recorder = Recorder()
    release = asyncio.Event()

    class Worker(MicroAgent):
        @consumer(queue, timeout=0.05, max_retries=1, retry_delay=0.01)
        async def work(self, job: Job, message: Message) -> None:
            if message.attempt == 1:
                await release.wait()  # never set: the watchdog ends it

    broker = backend.broker()
    async with Worker(broker=broker, middlewares=[recorder]):
        await broker[queue].send(Job(job_id=1))
        first, second = await recorder.handled.wait(2)
    assert first[3:7] == (Outcome.RETRIED, 1, True, 'TimeoutError')
    assert second[3:7] == (Outcome.OK, 2, False, None)


async def test_an_invalid_message_reaches_the_middlewares_dead_lettered(backend: Backend, unique: str) -> None:
    queue = Queue(f'mw_invalid_{unique}', Job)
    recorder = Recorder()
    called = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            called.add(job)

    broker = backend.broker()
    async with Worker(broker=broker, middlewares=[recorder]):
        await broker[queue].declare()
        await inject_raw(backend, broker, queue.name, [b'{"job_id": "one"}'])
        (seen,) = await recorder.handled.wait(1)
    assert seen[3] == Outcome.DEAD_LETTERED and seen[6] == InvalidPayload.__name__
    assert not called.items
    assert await broker[queue].dead_letter_count() == 1


async def test_receivers_are_seen_with_their_outcome(backend: Backend, unique: str) -> None:
    signal = Signal(f'mw_signal_{unique}', Job)
    recorder = Recorder()

    class Listener(MicroAgent):
        @receiver(signal)
        async def heard(self, job: Job) -> None:
            if job.job_id == 2:
                raise ValueError('not this one')

    bus = backend.bus()
    async with Listener(bus=bus, middlewares=[recorder]):
        await bus[signal].send('tester', Job(job_id=1))
        await bus[signal].send('tester', Job(job_id=2))
        seen = await recorder.handled.wait(2)
    assert sorted(item[3] for item in seen) == [Outcome.FAILED, Outcome.OK]
    assert {item[:3] for item in seen} == {('receiver', signal.name, 'Listener.heard')}


async def test_middlewares_run_in_order_the_first_outermost_and_set_headers(backend: Backend, unique: str) -> None:
    queue = Queue(f'mw_order_{unique}', Job)
    order: list[str] = []
    outer, inner = Recorder('outer', order), Recorder('inner', order)
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job, message: Message) -> None:
            order.append('handler')
            got.add(message)

    broker = backend.broker()
    async with Worker(broker=broker, middlewares=[outer, inner]):
        await broker[queue].send(Job(job_id=1))
        (message,) = await got.wait(1)
        await inner.handled.wait(1)
        await outer.handled.wait(1)
    assert order == ['outer in', 'inner in', 'handler', 'inner out', 'outer out']
    assert message.headers == {'x-seen-by': 'inner'}  # the innermost send middleware wrote last
    assert outer.sent.items == inner.sent.items == [('queue', queue.name, 1)]


async def test_every_kind_of_send_goes_through_the_middlewares(backend: Backend, unique: str) -> None:
    queue = Queue(f'mw_sends_{unique}', Job)
    exchange = Exchange(f'mw_fan_{unique}', 'fanout')
    bound = Queue(f'mw_bound_{unique}', Job, exchange=exchange.name)
    ask = Signal(f'mw_ask_{unique}', Job, returns=int)
    recorder = Recorder()

    class Answerer(MicroAgent):
        @receiver(ask)
        async def answer(self, job: Job) -> int:
            return job.job_id * 2

    bus, broker = backend.bus(), backend.broker()
    sender = MicroAgent(bus=bus, broker=broker, middlewares=[recorder])
    async with Answerer(bus=backend.bus()):
        assert list((await bus[ask].call('tester', Job(job_id=21), timeout=5)).values()) == [42]
    await broker[bound].declare()
    await broker[queue].send(Job(job_id=1))
    await broker[queue].send_many([Job(job_id=2), Job(job_id=3)])
    assert await broker.publish(exchange.name, Job(job_id=4)) >= 1
    assert sender.middlewares == (recorder,) and bus.middlewares == broker.middlewares == (recorder,)
    assert recorder.sent.items == [('call', ask.name, 1), ('queue', queue.name, 1), ('queue', queue.name, 2),
                                   ('exchange', exchange.name, 1)]


async def test_a_bus_middleware_sees_the_answers_its_receivers_send(backend: Backend, unique: str) -> None:
    ask = Signal(f'mw_answer_{unique}', Job, returns=int)
    recorder = Recorder()

    class Answerer(MicroAgent):
        @receiver(ask)
        async def answer(self, job: Job) -> int:
            return job.job_id

    caller = backend.bus()
    async with Answerer(bus=backend.bus().use(recorder)):
        assert list((await caller[ask].call('tester', Job(job_id=5), timeout=5)).values()) == [5]
        (sent,) = await recorder.sent.wait(1)
    assert sent == ('answer', ask.name, 1)
    assert not recorder.handled.items  # a bus's middlewares wrap sends; an agent's wrap handlers


async def test_a_periodic_run_is_seen(backend: Backend) -> None:
    recorder = Recorder()
    runs = Collector()

    class Ticker(MicroAgent):
        @periodic(period=0.01, timeout=1)
        async def tick(self) -> None:
            runs.add(1)
            if len(runs.items) == 1:
                raise RuntimeError('first tick fails')

    async with Ticker(middlewares=[recorder]):
        first, second = (await recorder.handled.wait(2))[:2]
    assert first[:4] == ('periodic', 'Ticker.tick', 'Ticker.tick', Outcome.FAILED)
    assert second[3] == Outcome.OK


def test_something_that_is_no_middleware_is_refused() -> None:
    with pytest.raises(InvalidArgument, match='not a middleware'):
        MicroAgent(middlewares=[object()])  # type: ignore[list-item]


async def test_a_middleware_not_enabled_now_is_left_out_of_the_call(backend: Backend, unique: str) -> None:
    queue = Queue(f'mw_idle_{unique}', Job)
    first, idle = Recorder('first'), Recorder('idle')
    idle.enabled = False
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)

    broker = backend.broker()
    async with Worker(broker=broker, middlewares=[first, idle]):
        await broker[queue].send(Job(job_id=1))
        await got.wait(1)
        await first.handled.wait(1)
        idle.enabled = True  # read per message: from now on it takes part
        await broker[queue].send(Job(job_id=2))
        await got.wait(2)
        await idle.handled.wait(1)
    assert [item[0] for item in idle.sent.items] == ['queue']  # the second send only
    assert len(first.handled.items) == 2 and len(idle.handled.items) == 1
