"""Priority queues on every backend: ``Queue(..., priorities=n)`` and ``send(..., priority=level)``.

What the library promises and these tests hold it to: messages waiting in a queue are consumed
highest level first (within a level, oldest first), and a message keeps its level when it is
delayed, retried, or dead-lettered and requeued. Bounds are refused before anything is sent, with
an error naming the queue. Orders are only asserted for messages that all wait in the queue before
a consumer with ``concurrency=1`` starts.
"""
from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microagent import AbstractQueueBroker, DeclarationError, MicroAgent, Queue, consumer
from microagent.errors import InvalidArgument, UsageError
from microagent.queue import MAX_PRIORITIES
from tests.conformance.backends import Backend
from tests.helpers import Collector, eventually


class Job(msgspec.Struct, frozen=True):
    job_id: int


def _queue(backend: Backend, name: str, priorities: int = 3) -> Queue[Job]:
    # RabbitMQ keeps priorities on classic queues only: the amqp-quorum backend says so (below)
    return Queue(name, Job, priorities=priorities, queue_type='classic' if backend.engine == 'amqp' else None)


def _agent(queue: Queue[Job], got: Collector, fail: set[int] | None = None,
           retry_delay: float = 0.05) -> type[MicroAgent]:
    failing = fail if fail is not None else set()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=1, prefetch=1, max_retries=1, retry_delay=retry_delay)
        async def handle(self, job: Job) -> None:
            got.add(job.job_id)
            if job.job_id in failing:
                failing.discard(job.job_id)
                raise RuntimeError('once')

    return Worker


async def test_waiting_messages_are_consumed_highest_level_first(backend: Backend, unique: str) -> None:
    queue = _queue(backend, f'prio_{unique}', priorities=3)
    broker = backend.broker()
    bound = broker[queue]
    await bound.declare()
    await bound.send(Job(1))                                # the default level: 0
    await bound.send(Job(2), priority=2)
    await bound.send_many([Job(3), Job(4)], priority=1)
    await bound.send(Job(5), priority=0)
    await bound.send_many([Job(6), Job(7)], priority=2)
    await bound.send_many([Job(8)])
    await eventually(lambda: _length_is(bound, 8))
    got = Collector()
    async with _agent(queue, got)(broker=broker):
        await got.wait(8)
    assert got.items == [2, 6, 7, 3, 4, 1, 5, 8]


async def _length_is(bound: Any, count: int) -> bool:
    return bool(await bound.length() == count)


async def test_a_retried_delayed_or_requeued_message_keeps_its_level(backend: Backend, unique: str) -> None:
    queue = _queue(backend, f'prio_keep_{unique}', priorities=3)
    broker = backend.broker()
    bound = broker[queue]
    got = Collector()
    # a retry: job 1 (level 2) fails once; the agent stops before its retry is due
    await bound.send(Job(1), priority=2)
    async with _agent(queue, got, fail={1}, retry_delay=0.3)(broker=broker):
        await got.wait(1)
        await eventually(lambda: _delayed(bound))
    await bound.send(Job(2), priority=1)
    await bound.send(Job(3), priority=2, delay=0.3)  # a delayed send
    await bound.send_many([Job(10), Job(11), Job(12)])  # level 0, sent before the others come back
    await asyncio.sleep(0.5)  # job 1's retry and job 3's delay are due
    got2 = Collector()
    async with _agent(queue, got2)(broker=broker):
        await got2.wait(6)
    assert got2.items[:3] in ([1, 3, 2], [3, 1, 2]), got2.items  # levels 2, 2, then 1, then the rest
    assert got2.items[3:] == [10, 11, 12]


async def _delayed(bound: Any) -> bool:
    depth = await bound.depth()
    return bool(depth.delayed == 1 and depth.in_flight == 0)


async def test_a_requeued_dead_letter_keeps_its_level(backend: Backend, unique: str) -> None:
    queue = _queue(backend, f'prio_dl_{unique}', priorities=2)
    broker = backend.broker()
    bound = broker[queue]
    got = Collector()

    class Failing(MicroAgent):
        @consumer(queue, concurrency=1, max_retries=0)
        async def handle(self, job: Job) -> None:
            got.add(job.job_id)
            raise RuntimeError('dead')

    await bound.send(Job(1), priority=1)
    async with Failing(broker=broker):
        await eventually(lambda: _dead(bound))
    await bound.send_many([Job(10), Job(11)])  # level 0
    assert await bound.requeue_dead_letters() == 1
    await eventually(lambda: _length_is(bound, 3))
    got2 = Collector()
    async with _agent(queue, got2)(broker=broker):
        await got2.wait(3)
    assert got2.items == [1, 10, 11]


async def _dead(bound: Any) -> bool:
    return bool(await bound.dead_letter_count() == 1)


_brokers: dict[int, AbstractQueueBroker] = {}


def _broker(backend: Backend) -> AbstractQueueBroker:
    """One broker for every example of a property test on ``backend`` (closed with the backend)."""
    key = id(backend)
    if key not in _brokers or _brokers[key] not in backend.opened:
        _brokers[key] = backend.broker()
    return _brokers[key]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(priority=st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=3), st.none()))
async def test_a_priority_out_of_bounds_is_refused_naming_the_queue(backend: Backend, priority: Any) -> None:
    name = f'prio_bounds_{backend.name.replace("-", "_")}'
    queue = _queue(backend, name, priorities=4)
    bound = _broker(backend)[queue]
    if priority is None or (type(priority) is int and 0 <= priority < 4):
        return  # a level the queue has (or none): taken; the sends above show it
    message = (rf"queue '{name}': priority must be an int from 0 to 3 \(the queue has 4 "
               'levels, higher first\\), got ')
    with pytest.raises(InvalidArgument, match=message):
        await bound.send(Job(1), priority=priority)
    with pytest.raises(ValueError, match=message):
        await bound.send_many([Job(1)], priority=priority)
    assert await bound.length() == 0


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(priority=st.integers(min_value=-3, max_value=300))
async def test_a_priority_on_a_queue_without_levels_is_refused(backend: Backend, priority: int) -> None:
    queue = Queue('prio_none_conformance', Job)
    bound = _broker(backend)[queue]
    message = r"queue 'prio_none_conformance': priority=.*, but the queue has no priority levels"
    with pytest.raises(UsageError, match=message):
        await bound.send(Job(1), priority=priority)
    with pytest.raises(TypeError, match=message):
        await bound.send_many([Job(1)], priority=priority)
    assert await bound.length() == 0


@given(priorities=st.one_of(st.integers(), st.booleans(), st.floats(), st.text(max_size=2)))
def test_priorities_out_of_bounds_is_a_declaration_error_naming_the_queue(priorities: Any) -> None:
    if type(priorities) is int and 2 <= priorities <= MAX_PRIORITIES:
        assert Queue(f'prio_levels_{priorities}', Job, priorities=priorities).priorities == priorities
        return
    with pytest.raises(DeclarationError, match=r"queue 'prio_levels_bad': priorities is .*; expected an int "
                                               f'from 2 to {MAX_PRIORITIES}'):
        Queue('prio_levels_bad', Job, priorities=priorities)


def test_priorities_are_part_of_the_contract(unique: str) -> None:
    Queue(f'prio_contract_{unique}', Job, priorities=3)
    Queue(f'prio_contract_{unique}', Job, priorities=3)  # the same contract: fine
    with pytest.raises(DeclarationError, match=f'prio_contract_{unique}'):
        Queue(f'prio_contract_{unique}', Job, priorities=4)
    with pytest.raises(DeclarationError, match=f'prio_contract_{unique}'):
        Queue(f'prio_contract_{unique}', Job)


def test_info_shows_a_queues_levels(unique: str) -> None:
    from microagent import MicroAgent, consumer
    from microagent.contract.info import agent_info

    queue = Queue(f'prio_info_{unique}', Job, priorities=4)

    class Reporter(MicroAgent):
        @consumer(queue)
        async def report(self, job: Job) -> None: ...

    assert agent_info(Reporter)['queues'][queue.name]['priorities'] == 4
