"""Bounds every backend's sends keep (the engines check them, before anything is published): a
finite delay within MAX_DELAY, a finite RPC timeout, a header value within MAX_HEADER_VALUE, and the
whole message (body and headers) within max_message_size."""
from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

from microagent import Exchange, InvalidPayload, MicroAgent, Queue, Signal, consumer, receiver
from microagent.limits import MAX_DELAY, MAX_HEADER_VALUE
from microagent.message import InvalidHeader
from tests.conformance.backends import Backend
from tests.helpers import Collector


class Job(msgspec.Struct, frozen=True):
    job_id: int
    text: str = ''


class Query(msgspec.Struct, frozen=True):
    user_id: int


BAD_DELAYS: list[Any] = [math.nan, math.inf, -math.inf, -1, -0.001, True, False, MAX_DELAY + 1, 10 ** 12, '5']


@pytest.mark.parametrize('delay', BAD_DELAYS, ids=repr)
async def test_a_delay_that_is_not_finite_or_out_of_bounds_is_refused(backend: Backend, unique: str,
                                                                       delay: Any) -> None:
    queue = Queue(f'delay_{unique}', Job)
    bound = backend.broker()[queue]
    message = f"queue 'delay_{unique}': delay must be a finite number of seconds from 0 to 31622400"
    with pytest.raises(ValueError, match=message):
        await bound.send(Job(job_id=1), delay=delay)
    with pytest.raises(ValueError, match=message):
        await bound.send_many([Job(job_id=1)], delay=delay)
    assert await bound.length() == 0
    assert (await bound.depth()).delayed == 0


@pytest.mark.parametrize('timeout', [math.nan, math.inf, 0, -1, True], ids=repr)
async def test_an_rpc_timeout_that_is_not_finite_and_positive_is_refused(backend: Backend, unique: str,
                                                                          timeout: Any) -> None:
    signal = Signal(f'tmo_{unique}', Query, returns=int)
    got = Collector()

    class Counter(MicroAgent):
        @receiver(signal)
        async def count(self, query: Query) -> int:
            got.add(query.user_id)
            return query.user_id

    bus = backend.bus()
    async with Counter(bus=backend.bus()):
        message = f"signal 'tmo_{unique}': timeout must be a finite number of seconds > 0, got {timeout!r}"
        with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
            await bus[signal].call('caller', Query(user_id=1), timeout=timeout)
        with pytest.raises(ValueError, match='timeout must be a finite number'):
            async with bus[signal].waiter('caller', Query(user_id=2), timeout=timeout):
                pass
        assert list((await bus[signal].call('caller', Query(user_id=3), timeout=5)).values()) == [3]
    assert got.items == [3]  # the refused calls published nothing


async def test_a_header_value_over_the_limit_is_refused(backend: Backend, unique: str) -> None:
    queue = Queue(f'hdr_{unique}', Job)
    bound = backend.broker()[queue]
    await bound.send(Job(job_id=1), headers={'note': 'x' * MAX_HEADER_VALUE})  # at the limit: taken
    for value in ('x' * (MAX_HEADER_VALUE + 1), 'é' * (MAX_HEADER_VALUE // 2 + 1)):  # bytes, not characters
        with pytest.raises(InvalidHeader, match=f"header 'note': a header value is at most {MAX_HEADER_VALUE} bytes"):
            await bound.send(Job(job_id=2), headers={'note': value})
        with pytest.raises(InvalidHeader, match='at most 8192 bytes'):
            await bound.send_many([Job(job_id=3)], headers={'note': value})
    assert await bound.length() == 1


async def test_headers_count_against_max_message_size_of_a_queue(backend: Backend, unique: str) -> None:
    queue = Queue(f'size_{unique}', Job)
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)

    broker = backend.broker(max_message_size=2000)
    headers = {f'h{i}': 'v' * 500 for i in range(4)}  # each small, 2000+ bytes together
    message = (rf"queue 'size_{unique}': message of \d+ bytes \(body \d+, "
               r'headers \d+\) exceeds max_message_size of 2000 bytes')
    with pytest.raises(InvalidPayload, match=message):
        await broker[queue].send(Job(job_id=1), headers=headers)
    with pytest.raises(InvalidPayload, match=message):
        await broker[queue].send_many([Job(job_id=2), Job(job_id=3)], headers=headers)
    assert await broker[queue].length() == 0
    async with Worker(broker=broker):
        await broker[queue].send(Job(job_id=4), headers={'h0': 'v' * 500})
        assert await got.wait(1) == [4]


async def test_headers_count_against_max_message_size_of_an_exchange(backend: Backend, unique: str) -> None:
    exchange = Exchange(f'sx_{unique}', 'fanout')
    queue = Queue(f'sxq_{unique}', Job, exchange=exchange)
    broker = backend.broker(max_message_size=2000)
    await broker.transport.declare(queue)
    with pytest.raises(InvalidPayload, match=f"exchange 'sx_{unique}': message of .* exceeds max_message_size"):
        await broker.publish(exchange.name, Job(job_id=1), headers={'big': 'v' * 2000})
    assert await broker[queue].length() == 0


async def test_headers_count_against_max_message_size_of_a_signal(backend: Backend, unique: str) -> None:
    signal = Signal(f'ssize_{unique}', Query, returns=int)
    got = Collector()

    class Listener(MicroAgent):
        @receiver(signal)
        async def heard(self, query: Query) -> int:
            got.add(query.user_id)
            return 0

    bus = backend.bus()
    bus.max_message_size = 2000
    big = {'big': 'v' * 2000}
    async with Listener(bus=backend.bus()):
        with pytest.raises(InvalidPayload, match=f"signal 'ssize_{unique}': message of .* exceeds max_message_size "
                                                 'of 2000 bytes'):
            await bus[signal].send('sender', Query(user_id=1), headers=big)
        with pytest.raises(InvalidPayload, match='exceeds max_message_size of 2000 bytes'):
            await bus[signal].call('sender', Query(user_id=2), headers=big, timeout=5)
        assert not bus._pending  # the refused call left nothing waiting
        await bus[signal].send('sender', Query(user_id=3), headers={'small': 'v'})
        assert await got.wait(1) == [3]  # only the message within the bound was published
