"""Dead-letter tools every backend must offer: pick letters to requeue or purge, and tell a queue
that exists from a mistyped name (runs once per backend in tests/conformance/backends.py)."""
from __future__ import annotations

from functools import partial

import msgspec

from microagent import MicroAgent, Queue, consumer
from microagent.broker import AbstractQueueBroker
from microagent.transport import DeadLetter
from tests.conformance.backends import Backend
from tests.helpers import Collector, eventually


class Job(msgspec.Struct, frozen=True):
    job_id: int


async def _dead(broker: AbstractQueueBroker, queue: Queue[Job], ids: list[int]) -> None:
    """Dead-letter one message per id, in order; job 2k+1 fails with 'odd', the others with 'even'."""
    class Failing(MicroAgent):
        @consumer(queue, max_retries=0)
        async def work(self, job: Job) -> None:
            raise ValueError('odd' if job.job_id % 2 else 'even')

    async def all_dead() -> bool:
        return await broker[queue].dead_letter_count() == len(ids)

    async with Failing(broker=broker):
        for job_id in ids:  # one at a time: the dead letters keep this order
            before = await broker[queue].dead_letter_count()
            await broker[queue].send(Job(job_id))
            await eventually(partial(_more, broker, queue, before))
        await eventually(all_dead)


async def _more(broker: AbstractQueueBroker, queue: Queue[Job], than: int) -> bool:
    return await broker[queue].dead_letter_count() > than


def _ids(letters: list[DeadLetter]) -> list[int]:
    return [msgspec.json.decode(letter.body, type=Job).job_id for letter in letters]


def _odd(position: int, letter: DeadLetter) -> bool:
    return 'odd' in letter.reason


async def test_requeue_only_the_picked_dead_letters(backend: Backend, unique: str) -> None:
    queue = Queue(f'pick_{unique}', Job)
    broker = backend.broker()
    await _dead(broker, queue, [1, 2, 3, 4])

    assert await broker[queue].requeue_dead_letters(_odd) == 2

    assert _ids(await broker[queue].dead_letters()) == [2, 4]  # the rest stay, in order
    got = Collector()

    class Healed(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)

    async with Healed(broker=broker):
        assert sorted(await got.wait(2)) == [1, 3]


async def test_requeue_one_letter_by_position(backend: Backend, unique: str) -> None:
    queue = Queue(f'one_{unique}', Job)
    broker = backend.broker()
    await _dead(broker, queue, [1, 2, 3])

    assert await broker.requeue_dead_letters(queue.name, lambda position, letter: position == 1) == 1

    assert _ids(await broker[queue].dead_letters()) == [1, 3]
    assert await broker[queue].length() == 1


async def test_purge_picked_or_every_dead_letter(backend: Backend, unique: str) -> None:
    queue = Queue(f'purge_{unique}', Job)
    broker = backend.broker()
    await _dead(broker, queue, [1, 2, 3])

    assert await broker[queue].purge_dead_letters(_odd) == 2
    assert _ids(await broker[queue].dead_letters()) == [2]
    assert await broker[queue].length() == 0  # purged, not requeued

    assert await broker.purge_dead_letters(queue.name) == 1
    assert await broker[queue].dead_letter_count() == 0
    assert await broker.purge_dead_letters(queue.name) == 0


async def test_a_queue_exists_once_used_not_by_its_name_alone(backend: Backend, unique: str) -> None:
    queue = Queue(f'used_{unique}', Job)
    broker = backend.broker()
    assert not await broker.queue_exists(f'never_{unique}')
    await _dead(broker, queue, [1])

    assert await broker.queue_exists(queue.name)
