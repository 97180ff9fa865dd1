"""A known workload for ``marun --http``: the producer queues three jobs on start; the worker
handles one, retries one once, and dead-letters the third after its retry. Names come from the
environment, so each test has queues and signals of its own on the shared servers."""
from __future__ import annotations

import os

import msgspec

from microagent import Message, MicroAgent, Queue, Signal, consumer, on, receiver


class Job(msgspec.Struct, frozen=True):
    number: int
    kind: str  # 'ok', 'once' (fails on the first attempt), 'never' (always fails)


class Nudge(msgspec.Struct, frozen=True):
    number: int


_SUFFIX = os.environ.get('HTTP_TEST_SUFFIX', 'local')
jobs = Queue(f'http_jobs_{_SUFFIX}', Job)
nudge = Signal(f'http_nudge_{_SUFFIX}', Nudge)


class Producer(MicroAgent):
    sends = (jobs,)

    @on('post_start')
    async def produce(self) -> None:
        for number, kind in enumerate(('ok', 'once', 'never'), 1):
            await self.broker[jobs].send(Job(number, kind))


class Worker(MicroAgent):
    @consumer(jobs, max_retries=1, retry_delay=0.05)
    async def work(self, job: Job, message: Message) -> None:
        if job.kind == 'never' or (job.kind == 'once' and message.attempt == 1):
            raise RuntimeError(f'job {job.number} fails on attempt {message.attempt}')

    @receiver(nudge)
    async def nudged(self, payload: Nudge) -> None:
        """Subscribed, so that the bus's subscriber is part of the readiness."""
