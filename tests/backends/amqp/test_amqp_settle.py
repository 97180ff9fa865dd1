"""AMQPBroker's settle path when RabbitMQ refuses a dead letter: the message stays unacked while the
engine tries again, is nacked back to the queue after the last try, and is never lost."""
from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest

from microagent import MicroAgent, Queue, consumer
from microagent.backends.amqp.link import Outgoing
from microagent.message import Envelope
from microagent.settle import SETTLE_TRIES
from tests.amqp_support import Servers
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.amqp


class Job(msgspec.Struct, frozen=True):
    job_id: int


@pytest.mark.parametrize('failures', [1, SETTLE_TRIES], ids=['once', 'every try'])
async def test_refused_dead_letter_is_tried_again_then_nacked_back(
        amqp: Servers, unique: str, failures: int, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    queue = Queue(f'refused_{unique}', Job)
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=1, prefetch=1)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)

    broker = amqp.broker()
    publish = broker.transport._publisher.publish
    dead_publishes = Collector()

    async def refusing(messages: list[Outgoing], what: str) -> None:
        if messages[0].exchange.endswith('.dead'):
            dead_publishes.add(what)
            if len(dead_publishes.items) <= failures:
                raise ConnectionError('publisher confirm lost')
        await publish(messages, what)

    monkeypatch.setattr(broker.transport._publisher, 'publish', refusing)
    caplog.set_level(logging.INFO, logger='microagent.broker')
    async with Worker(broker=broker):
        bodies = [b'{broken', *(msgspec.json.encode(Job(i)) for i in range(3))]
        await broker.transport.put(queue, [Envelope(body) for body in bodies])
        assert sorted(await got.wait(3)) == [0, 1, 2]
        await eventually(lambda: _dead_is(broker, queue, 1))
    assert len(dead_publishes.items) == failures + 1
    assert ('returned it to the queue, it will be delivered again' in caplog.text) == (failures == SETTLE_TRIES)
    assert ('dead-letter of the message succeeded on try 2' in caplog.text) == (failures == 1)
    assert await broker[queue].length() == 0  # no consumer left: nothing unacked went back either
    assert [letter.body for letter in await broker[queue].dead_letters()] == [b'{broken']


async def _dead_is(broker: Any, queue: Queue[Any], expected: int) -> bool:
    return bool(await broker[queue].dead_letter_count() == expected)
