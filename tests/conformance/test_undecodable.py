"""No message is left unsettled (every backend): undecodable bodies from foreign producers are
dead-lettered with a reason naming the queue while the consumer goes on, and a failing settle
operation is tried again, then the message is returned to the queue, never lost."""
from __future__ import annotations

import logging
import random
from typing import Any

import msgspec
import pytest

from microagent import MicroAgent, Queue, consumer
from microagent.settle import SETTLE_TRIES
from microagent.transport import Delivery
from tests.conformance.backends import Backend, inject_raw, unsettled_after_stop
from tests.helpers import Collector, eventually


class Job(msgspec.Struct, frozen=True):
    job_id: int
    text: str = ''


UNDECODABLE = [
    b'{"job_id": 1, "text": "\xff\xfe"}',  # invalid UTF-8 inside a JSON string
    b'{"a":' * 100_000 + b'1' + b'}' * 100_000,  # 100k levels deep
    b'[' * 100_000 + b']' * 100_000,
    random.Random(7).randbytes(48),
    b'"not an object"',
    b'{"job_id": 1e999}',
]


async def _dead(broker: Any, queue: Queue[Any], expected: int) -> bool:
    return bool(await broker[queue].dead_letter_count() == expected)


async def test_undecodable_messages_are_dead_lettered_and_valid_ones_handled(backend: Backend, unique: str) -> None:
    queue = Queue(f'undecodable_{unique}', Job)
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=2, prefetch=2)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)

    broker = backend.broker()
    await broker[queue].declare()
    valid = [msgspec.json.encode(Job(i)) for i in range(100)]
    bodies = valid[:10] + UNDECODABLE + valid[10:]
    bodies[50:50] = UNDECODABLE[:2]  # a second copy, amid valid ones
    async with Worker(broker=broker):
        await inject_raw(backend, broker, queue.name, bodies)
        assert sorted(await got.wait(100, timeout=20)) == list(range(100))
        await eventually(lambda: _dead(broker, queue, len(UNDECODABLE) + 2), timeout=10)
    letters = await broker[queue].dead_letters()
    assert sorted(letter.body for letter in letters) == sorted(UNDECODABLE + UNDECODABLE[:2])
    assert all(f"Invalid payload for queue 'undecodable_{unique}'" in letter.reason for letter in letters)
    assert await broker[queue].length() == 0
    assert await unsettled_after_stop(backend, queue.name) == 0


@pytest.mark.parametrize('failures', [1, SETTLE_TRIES], ids=['once', 'every try'])
async def test_failing_dead_letter_is_tried_again_then_released_never_lost(
        backend: Backend, unique: str, failures: int, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    queue = Queue(f'settle_{unique}', Job)
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=1, prefetch=1)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)

    broker = backend.broker()
    real_dead_letter = broker.transport.dead_letter
    calls = Collector()

    async def flaky_dead_letter(target: Queue[Any], delivery: Delivery[Any], reason: str) -> None:
        calls.add(reason)
        if len(calls.items) <= failures:
            raise ConnectionError('dead-letter store unreachable')
        await real_dead_letter(target, delivery, reason)

    monkeypatch.setattr(broker.transport, 'dead_letter', flaky_dead_letter)
    await broker[queue].declare()
    caplog.set_level(logging.INFO, logger='microagent.broker')
    async with Worker(broker=broker):
        await inject_raw(backend, broker, queue.name, [b'{broken', *(msgspec.json.encode(Job(i)) for i in range(5))])
        assert sorted(await got.wait(5)) == list(range(5))
        await eventually(lambda: _dead(broker, queue, 1))
    assert len(calls.items) == failures + 1
    assert [letter.body for letter in await broker[queue].dead_letters()] == [b'{broken']
    assert f"queue 'settle_{unique}'" in calls.items[-1]
    returned = 'returned it to the queue, it will be delivered again' in caplog.text
    assert returned == (failures == SETTLE_TRIES)
    assert ('dead-letter of the message succeeded on try 2' in caplog.text) == (failures == 1)
    assert 'could not dead-letter a message (ConnectionError: dead-letter store unreachable)' in caplog.text
    assert await broker[queue].length() == 0
    assert await unsettled_after_stop(backend, queue.name) == 0
