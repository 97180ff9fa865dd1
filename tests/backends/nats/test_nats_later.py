"""The holding stream of delayed messages under bad input: a due time that is no due time (``inf``,
``nan``, ``1e300``, ``-5``, ``abc``) is dead-lettered with the reason, and the valid delayed
messages stored in the same batch still arrive; and an idle consumer (empty fetches) logs nothing."""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest

from microagent import MicroAgent, Queue, consumer
from microagent.backends.nats import NATSBroker
from microagent.backends.nats.headers import DUE_HEADER
from microagent.backends.nats.layout import Layout
from tests.conformance.backends import delete_nats_streams
from tests.helpers import Collector, eventually
from tests.services import NATS_DSN

pytestmark = pytest.mark.nats

BAD_DUE = ['inf', 'nan', '1e300', '-5', 'abc']


@pytest.fixture
async def broker() -> AsyncIterator[NATSBroker]:
    made = NATSBroker(NATS_DSN)
    yield made
    await made.close()
    await delete_nats_streams([made])


async def test_a_broken_due_time_is_dead_lettered_and_the_batch_moves_on(broker: NATSBroker, unique: str) -> None:
    queue = Queue(f'due_{unique}')
    await broker.transport.declare(queue)
    later = Layout.of(queue.name).later_subject
    client = await nats.connect(NATS_DSN)
    try:
        js = client.jetstream()
        soon = repr(time.time() + 0.3)
        valid = [('now', repr(time.time() - 1)), ('soon', soon), ('none', None)]
        for n, (name, due) in enumerate([*valid[:2], *[(bad, bad) for bad in BAD_DUE], valid[2]]):
            headers = {DUE_HEADER: due} if due is not None else None
            await js.publish(later, msgspec.json.encode({'name': name, 'n': n}), headers=headers)
    finally:
        await client.close()
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, **job: str | int) -> None:
            got.add(job['name'])

    async with Worker(broker=broker):
        assert sorted(await got.wait(3)) == ['none', 'now', 'soon']
        await eventually(lambda: _dead(broker, queue, len(BAD_DUE)))
    letters = await broker[queue].dead_letters()
    by_name = {msgspec.json.decode(letter.body)['name']: letter for letter in letters}
    assert sorted(by_name) == sorted(BAD_DUE)
    for bad, letter in by_name.items():
        assert f"{DUE_HEADER} '{bad}' is not a due time" in letter.reason
    assert await broker[queue].length() == 0
    assert sorted(got.items) == ['none', 'now', 'soon']  # each once


async def _dead(broker: NATSBroker, queue: Queue[Any], count: int) -> bool:
    return await broker.dead_letter_count(queue.name) == count


async def test_an_idle_consumer_logs_no_fetch_failure(broker: NATSBroker, unique: str,
                                                      caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty pull fetch is an empty queue, not a failure: nothing is logged while a consumer waits."""
    queue = Queue(f'idle_{unique}')
    monkeypatch.setattr(broker, 'fetch_timeout', 0.05)
    fetch, fetched = broker.transport.fetch, Collector()

    async def counted(*args: Any, **kwargs: Any) -> Any:
        got = await fetch(*args, **kwargs)
        fetched.add(len(got))
        return got

    monkeypatch.setattr(broker.transport, 'fetch', counted)

    class Idle(MicroAgent):
        @consumer(queue)
        async def work(self, **job: int) -> None:
            raise AssertionError('nothing was sent')

    caplog.set_level(logging.INFO)
    async with Idle(broker=broker):
        await fetched.wait(30, timeout=15)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
