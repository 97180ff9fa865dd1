"""Queue depth on every backend: a delayed send or a pending retry is work still to do, so it counts
in the depth (ready + delayed) and ``TestGroup.wait_queue_empty`` waits for it; a message being
handled counts in flight (runs once per backend in tests/conformance/backends.py)."""
from __future__ import annotations

import asyncio

import msgspec

from microagent import MicroAgent, Queue, QueueDepth, consumer
from microagent.testing import TestGroup
from tests.conformance.backends import Backend
from tests.helpers import eventually


class Job(msgspec.Struct, frozen=True):
    job_id: int


async def _delayed(group: TestGroup, queue: Queue[Job], count: int) -> bool:
    return (await group.depth(queue)).delayed == count


async def test_a_delayed_send_counts_in_depth_and_is_waited_for(backend: Backend, unique: str) -> None:
    queue = Queue(f'depth_delayed_{unique}', Job)

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            pass

    async with backend.group(Worker) as group:
        await group.broker[queue].send(Job(1), delay=0.5)
        assert await group.broker[queue].depth() == QueueDepth(ready=0, delayed=1, in_flight=0)
        assert await group.broker.queue_depth(queue.name) == QueueDepth(0, 1, 0)
        assert await group.broker[queue].length() == 0  # not ready: the 1.x length leaves it out
        await group.wait_queue_empty(queue, timeout=15)
        assert group.handler(Worker.work).models == [Job(1)]  # the wait lasted until it was handled
        assert await group.depth(queue) == QueueDepth(0, 0, 0)


async def test_a_pending_retry_counts_in_depth_and_is_waited_for(backend: Backend, unique: str) -> None:
    queue = Queue(f'depth_retry_{unique}', Job)
    calls: list[int] = []

    class Flaky(MicroAgent):
        @consumer(queue, max_retries=1, retry_delay=0.5)
        async def work(self, job: Job) -> None:
            calls.append(job.job_id)
            if len(calls) == 1:
                raise RuntimeError('first try fails')

    async with backend.group(Flaky) as group:
        await group.broker[queue].send(Job(2))
        probe = group.handler(Flaky.work)
        await probe.wait(1)
        await eventually(lambda: _delayed(group, queue, 1), timeout=10)  # the engine has scheduled the retry
        depth = await group.depth(queue)
        assert depth.depth == 1 and depth.total == 1, depth
        await group.wait_queue_empty(queue, timeout=15)
        assert probe.handled == 2 and len(probe.errors) == 1  # the retry ran before the wait returned
        assert await group.broker[queue].dead_letter_count() == 0


async def test_a_message_being_handled_counts_in_flight(backend: Backend, unique: str) -> None:
    queue = Queue(f'depth_busy_{unique}', Job)
    begun, release = asyncio.Event(), asyncio.Event()

    class Slow(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            begun.set()
            await release.wait()

    async with backend.group(Slow) as group:
        await group.broker[queue].send(Job(3))
        await asyncio.wait_for(begun.wait(), 10)
        assert await group.depth(queue) == QueueDepth(ready=0, delayed=0, in_flight=1)
        release.set()
        await group.wait_queue_empty(queue, timeout=10)
        assert group.handler(Slow.work).handled == 1
