"""The engines' header rules that need no server: the conversation of a periodic run, RPC error
answers only for callers that read them, ``message`` only where the handler asks for it."""
from __future__ import annotations

from typing import Any

import msgspec
import pytest

from microagent import InvalidHeader, Message, MicroAgent, Queue, Signal, consumer, periodic, receiver
from microagent.backends.memory import MemoryBroker, MemoryHub, MemorySignalBus
from microagent.message import MESSAGE_ID, REPLY_TO, REQUEST_ID, RPC_ERROR, Envelope, current_message, new_headers
from microagent.testing import TestGroup
from tests.helpers import Collector


class Job(msgspec.Struct, frozen=True):
    job_id: int


async def test_messages_of_one_periodic_run_share_a_conversation(unique: str) -> None:
    queue = Queue(f'eh_tick_{unique}', Job)
    seen = Collector()

    class Ticker(MicroAgent):
        @periodic(0.01)
        async def tick(self) -> None:
            await self.broker[queue].send(Job(job_id=1))
            await self.broker[queue].send(Job(job_id=2))

        @consumer(queue)
        async def work(self, job: Job, message: Message) -> None:
            seen.add((job.job_id, message.correlation_id, message.trace_id))

    async with Ticker(broker=MemoryBroker()):
        items = await seen.wait(4)
    runs: dict[str, set[int]] = {}
    for job_id, correlation_id, trace_id in items:
        runs.setdefault(correlation_id, set()).add(job_id)
        assert trace_id is not None
    first_two = {correlation_id for _, correlation_id, _ in sorted(items[:2], key=lambda item: item[0])}
    assert len(first_two) == 1  # the two sends of the first run: one conversation
    assert len(runs) >= 2  # the next run starts another one


async def test_only_an_envelope_wire_caller_hears_of_a_failed_receiver(unique: str) -> None:
    signal = Signal(f'eh_rpc_{unique}', Job, returns=int)

    class Broken(MicroAgent):
        @receiver(signal, concurrency=1)
        async def count(self, job: Job) -> int:
            raise ValueError(f'bad job {job.job_id}')

    hub = MemoryHub()
    caller = MemorySignalBus(hub=hub).transport
    replies = Collector()

    async def on_reply(envelope: Envelope) -> None:
        replies.add(envelope)

    await caller.receive_replies(on_reply)
    async with Broken(bus=MemorySignalBus(hub=hub)):
        legacy = {REQUEST_ID: 'r1', REPLY_TO: caller.reply_to}  # what a 1.x channel tells: no message id
        await caller.publish(signal.name, 'old', Envelope(b'{"job_id": 1}', legacy))
        await caller.publish(signal.name, 'new', Envelope(b'{"job_id": 2}', new_headers(reply_to=caller.reply_to,
                                                                                          request_id='r2')))
        (answer,) = await replies.wait(1)  # the receiver handles r1 first (concurrency 1): it sent nothing
    assert answer.headers is not None and answer.headers[REQUEST_ID] == 'r2' and MESSAGE_ID in answer.headers
    assert answer.body == b'{}'
    assert msgspec.json.decode(answer.headers[RPC_ERROR]) == {Broken.count.__qualname__: 'ValueError: bad job 2'}
    await caller.close()


async def test_a_handler_without_message_runs_with_the_message_current_but_unread(unique: str) -> None:
    queue = Queue(f'eh_lazy_{unique}', Job)
    seen = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            seen.add(current_message())

    async with TestGroup(Worker) as group:
        await group.broker[queue].send(Job(job_id=1), headers={'tenant': 'acme'})
        (message,) = await seen.wait(1)
    assert message is not None and message.headers == {'tenant': 'acme'}
    assert current_message() is None  # nothing leaks out of the handler


async def test_a_payload_parameter_named_message_is_still_the_payload(unique: str) -> None:
    queue = Queue(f'eh_named_{unique}', Job)

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, message: Job) -> None: ...

    async with TestGroup(Worker) as group:
        await group.broker[queue].send(Job(job_id=3))
        assert await group.handler(Worker.work).wait(1) == [Job(job_id=3)]


async def test_a_1x_message_gets_one_id_that_everything_it_causes_shares(unique: str) -> None:
    legacy, follow = Queue(f'eh_1x_{unique}', Job), Queue(f'eh_follow_{unique}', Job)
    seen = Collector()

    class Worker(MicroAgent):
        @consumer(legacy)
        async def work(self, job: Job, message: Message) -> None:
            seen.add(('handled', message.message_id))
            await self.broker[follow].send(Job(job_id=1))
            await self.broker[follow].send_many([Job(job_id=2)])

        @consumer(follow)
        async def then(self, job: Job, message: Message) -> None:
            seen.add(('caused', message.correlation_id))

    broker = MemoryBroker()
    async with Worker(broker=broker):
        await broker.transport.put(legacy, [Envelope(b'{"job_id": 0}')])  # a 1.x body: no headers at all
        items = await seen.wait(3)
    (handled,) = [value for kind, value in items if kind == 'handled']
    assert [value for kind, value in items if kind == 'caused'] == [handled, handled]


async def test_a_call_whose_answer_channel_failed_to_open_lets_the_next_call_open_it(unique: str) -> None:
    signal = Signal(f'eh_replies_{unique}', Job, returns=int)

    class Counter(MicroAgent):
        @receiver(signal)
        async def count(self, job: Job) -> int:
            return job.job_id

    hub = MemoryHub()
    caller = MemorySignalBus(hub=hub)
    opened = caller.transport.receive_replies
    failures = [ConnectionError('server away')]

    async def flaky(deliver: Any) -> None:
        if failures:
            raise failures.pop()
        await opened(deliver)

    caller.transport.receive_replies = flaky  # type: ignore[method-assign]
    async with Counter(bus=MemorySignalBus(hub=hub)):
        with pytest.raises(ConnectionError):
            await caller[signal].call('x', Job(job_id=1), timeout=60)
        assert await caller[signal].call('x', Job(job_id=2), timeout=60) == {Counter.count.__qualname__: 2}


async def test_a_bad_user_header_is_refused_on_every_send_and_nothing_is_sent(unique: str) -> None:
    signal, queue = Signal(f'eh_bad_{unique}', Job), Queue(f'eh_bad_{unique}', Job)
    bus, broker = MemorySignalBus(), MemoryBroker()
    for headers in ({'message-id': 'mine'}, {'x-death': '[]'}, {'bad name': 'x'}):
        with pytest.raises(InvalidHeader):
            await broker[queue].send(Job(job_id=1), headers=headers)
        with pytest.raises(InvalidHeader):
            await broker[queue].send_many([Job(job_id=1)], headers=headers)
        with pytest.raises(InvalidHeader):
            await bus[signal].send('x', Job(job_id=1), headers=headers)
    assert await broker[queue].length() == 0
