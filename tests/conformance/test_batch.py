"""Batch consumers on every backend: a list of up to ``batch`` messages per call, settled one by one."""
from __future__ import annotations

import asyncio
from collections import Counter

import msgspec
import pytest

from microagent import BatchFailed, DeclarationError, MicroAgent, Queue, consumer
from tests.conformance.backends import Backend, inject_raw
from tests.helpers import Collector, eventually


class Mail(msgspec.Struct, frozen=True):
    number: int


async def test_a_batch_handler_gets_lists_of_at_most_batch(backend: Backend, unique: str) -> None:
    queue = Queue(f'batch_{unique}', Mail)
    calls = Collector()

    class Mailer(MicroAgent):
        @consumer(queue, batch=10, batch_wait=0.05)
        async def send(self, mails: list[Mail]) -> None:
            calls.add([mail.number for mail in mails])

    broker = backend.broker()
    await broker[queue].send_many([Mail(n) for n in range(25)])
    async with Mailer(broker=broker):
        async with asyncio.timeout(10):
            while sum(map(len, calls.items)) < 25:
                await calls.wait(len(calls.items) + 1)
        await eventually(lambda: _settled(broker, queue))
    assert all(1 <= len(batch) <= 10 for batch in calls.items)
    assert sorted(n for batch in calls.items for n in batch) == list(range(25))
    assert len(calls.items) <= 6  # batched, not one call per message (3 full batches and the rest)


async def test_a_partial_batch_is_handled_after_batch_wait(backend: Backend, unique: str) -> None:
    queue = Queue(f'batch_wait_{unique}', Mail)
    calls = Collector()

    class Mailer(MicroAgent):
        @consumer(queue, batch=100, batch_wait=0.2)
        async def send(self, mails: list[Mail]) -> None:
            calls.add([mail.number for mail in mails])

    broker = backend.broker()
    async with Mailer(broker=broker):
        await broker[queue].send_many([Mail(1), Mail(2), Mail(3)])
        await calls.wait(1)
        await asyncio.sleep(0.3)  # a second call would come within a batch_wait: let it show
    assert calls.items == [[1, 2, 3]]


async def test_batch_failed_retries_the_named_and_acks_the_others(backend: Backend, unique: str) -> None:
    queue = Queue(f'batch_failed_{unique}', Mail)
    seen: Counter[int] = Counter()

    class Mailer(MicroAgent):
        @consumer(queue, batch=10, batch_wait=0.1, max_retries=1, retry_delay=0.05)
        async def send(self, mails: list[Mail]) -> None:
            seen.update(mail.number for mail in mails)
            bad = [mail for mail in mails if mail.number == 2]
            if bad:
                raise BatchFailed(bad, 'mail 2 bounced')

    broker = backend.broker()
    await broker[queue].send_many([Mail(1), Mail(2), Mail(3)])
    async with Mailer(broker=broker):
        await eventually(lambda: _dead_letters(broker, queue, 1), timeout=10)
        (letter,) = await broker[queue].dead_letters()
        await eventually(lambda: _settled(broker, queue))
    assert msgspec.json.decode(letter.body) == {'number': 2}
    assert 'mail 2 bounced' in letter.reason and letter.attempts == 2
    assert seen == Counter({1: 1, 2: 2, 3: 1})


async def test_a_failing_batch_retries_each_message(backend: Backend, unique: str) -> None:
    queue = Queue(f'batch_retry_{unique}', Mail)
    seen: Counter[int] = Counter()
    failed_once = asyncio.Event()

    class Mailer(MicroAgent):
        @consumer(queue, batch=10, batch_wait=0.1, retry_delay=0.05)
        async def send(self, mails: list[Mail]) -> None:
            seen.update(mail.number for mail in mails)
            if not failed_once.is_set():
                failed_once.set()
                raise ConnectionError('SMTP down')

    broker = backend.broker()
    await broker[queue].send_many([Mail(1), Mail(2)])
    async with Mailer(broker=broker):
        await eventually(lambda: _seen_twice(seen), timeout=10)
        await eventually(lambda: _settled(broker, queue))
    assert seen == Counter({1: 2, 2: 2})
    assert await broker[queue].dead_letter_count() == 0


async def test_an_invalid_message_is_dead_lettered_alone(backend: Backend, unique: str) -> None:
    queue = Queue(f'batch_invalid_{unique}', Mail)
    calls = Collector()

    class Mailer(MicroAgent):
        @consumer(queue, batch=10, batch_wait=0.1)
        async def send(self, mails: list[Mail]) -> None:
            calls.add(sorted(mail.number for mail in mails))

    broker = backend.broker()
    await broker[queue].send(Mail(1))
    await inject_raw(backend, broker, queue.name, [b'{"number": "one"}'])
    await broker[queue].send(Mail(3))
    async with Mailer(broker=broker):
        await eventually(lambda: _dead_letters(broker, queue, 1), timeout=10)
        async with asyncio.timeout(10):
            while sorted(n for batch in calls.items for n in batch) != [1, 3]:
                await calls.wait(len(calls.items) + 1)
    (letter,) = await broker[queue].dead_letters()
    assert 'number' in letter.reason


async def _settled(broker: object, queue: Queue[Mail]) -> bool:
    depth = await broker[queue].depth()  # type: ignore[index]
    return bool(depth.total == 0)


async def _dead_letters(broker: object, queue: Queue[Mail], count: int) -> bool:
    return bool(await broker[queue].dead_letter_count() == count)  # type: ignore[index]


async def _seen_twice(seen: Counter[int]) -> bool:
    return seen[1] == 2 and seen[2] == 2


def test_a_batch_handler_takes_the_list_alone() -> None:
    queue = Queue('batch_declared_wrong', Mail)
    with pytest.raises(DeclarationError, match='a batch consumer takes one parameter'):
        class Legacy(MicroAgent):
            @consumer(queue, batch=10)  # type: ignore[arg-type]
            async def send(self, **kwargs: object) -> None: ...
    with pytest.raises(DeclarationError, match='batch must be an integer >= 1'):
        class Empty(MicroAgent):
            @consumer(queue, batch=0)
            async def send(self, mails: list[Mail]) -> None: ...
