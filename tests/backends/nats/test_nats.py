"""NATS-specific behaviour: JetStream deduplication, plain NATS clients on the bus and queues, the
``#`` routing NATS has no wildcard for, readiness pings, credentials, the ``nats://`` CLI scheme."""
from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import nats
import pytest

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.backends.nats import NATSBroker, NATSSignalBus
from microagent.backends.nats.layout import Layout
from microagent.errors import ConnectionFailed, UsageError
from microagent.message import Envelope, Message
from microagent.queue import topics_match
from tests.conformance.backends import delete_nats_streams
from tests.helpers import Collector, eventually
from tests.launcher_agents.support import Starter, starter
from tests.services import NATS_DSN

pytestmark = pytest.mark.nats


class Job(msgspec.Struct, frozen=True):
    job_id: int


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    with starter(tmp_path) as run:
        yield run


@pytest.fixture
async def broker() -> AsyncIterator[NATSBroker]:
    made = NATSBroker(NATS_DSN)
    yield made
    await made.close()
    await delete_nats_streams([made])


async def test_a_repeated_send_is_stored_once_but_a_requeued_dead_letter_comes_back(
        broker: NATSBroker, unique: str) -> None:
    """``Nats-Msg-Id`` makes a send repeated after a lost ack harmless; the same id coming back from
    the dead letters, well inside the server's duplicate window, must not be taken for a repeat."""
    queue = Queue(f'dedupe_{unique}', Job)
    envelope = Envelope(b'{"job_id":1}', {'message-id': f'id-{unique}'})
    await broker.transport.put(queue, [envelope])
    await broker.transport.put(queue, [envelope])
    assert await broker[queue].length() == 1
    seen = Collector()

    class Worker(MicroAgent):
        @consumer(queue, max_retries=0)
        async def work(self, job: Job, message: Message) -> None:
            seen.add(message)
            if len(seen.items) == 1:
                raise RuntimeError('first time only')

    async with Worker(broker=broker):
        (first,) = await seen.wait(1)
        await eventually(lambda: _dead(broker, queue, 1))
        assert await broker.requeue_dead_letters(queue.name) == 1
        _, again = await seen.wait(2)
    assert first.message_id == again.message_id == f'id-{unique}'
    assert await broker[queue].length() == 0


async def _dead(broker: NATSBroker, queue: Queue[Job], count: int) -> bool:
    return await broker.dead_letter_count(queue.name) == count


@pytest.mark.parametrize(('topic', 'key'), [('a.#', 'a'), ('#.b', 'b'), ('a.#.b', 'a.b'), ('a.*', 'a.x'),
                                            ('a.*', 'a'), ('#', 'x.y.z'), ('a.#', 'ab')])
async def test_topic_routing_matches_the_other_backends_even_at_zero_words(
        broker: NATSBroker, unique: str, topic: str, key: str) -> None:
    """NATS ``>`` needs one word at least, microagent ``#`` none: routing is microagent's."""
    queue = Queue(f'route_{unique}', Job, exchange=f'routes_{unique}', topics=[topic])
    await broker[queue].declare()
    if topics_match((topic,), key):
        assert await broker.publish(f'routes_{unique}', Job(job_id=1), routing_key=key) == 1
        assert await broker[queue].length() == 1
    else:
        with pytest.raises(LookupError, match=f'routes_{unique}'):
            await broker.publish(f'routes_{unique}', Job(job_id=1), routing_key=key)


async def test_a_plain_jetstream_producer_feeds_a_consumer(broker: NATSBroker, unique: str) -> None:
    queue = Queue(f'foreign_{unique}', Job)
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)

    async with Worker(broker=broker):
        client = await nats.connect(NATS_DSN)
        try:
            await client.jetstream().publish(Layout.of(queue.name).subject, b'{"job_id": 7}')
        finally:
            await client.close()
        assert await got.wait(1) == [7]


async def test_a_plain_nats_request_gets_the_first_answer(unique: str) -> None:
    signal = Signal(f'ask_{unique}', Job, returns=int)

    class Answering(MicroAgent):
        @receiver(signal)
        async def double(self, job: Job) -> int:
            return job.job_id * 2

    bus = NATSSignalBus(NATS_DSN, prefix=f'T{unique}')
    client = await nats.connect(NATS_DSN)
    try:
        async with Answering(bus=bus):
            answer = await client.request(f'T{unique}.ask_{unique}.someone', b'{"job_id": 21}', timeout=5)
        assert msgspec.json.decode(answer.data) == {Answering.double.__qualname__: 42}
    finally:
        await client.close()
        await bus.close()


async def test_signal_names_that_are_no_subject_are_refused_by_name(unique: str) -> None:
    bus = NATSSignalBus(NATS_DSN, prefix=f'T{unique}')
    try:
        with pytest.raises(UsageError, match=re.escape(f"signal 'bad..{unique}'")):
            await bus.transport.publish(f'bad..{unique}', 'me', Envelope(b'{}'))
    finally:
        await bus.close()
    with pytest.raises(UsageError, match='bus prefix'):
        NATSSignalBus(NATS_DSN, prefix='two words')


async def test_ping_answers_on_a_live_server_and_raises_on_a_dead_one() -> None:
    live_bus, live_broker = NATSSignalBus(NATS_DSN), NATSBroker(NATS_DSN)
    dead = NATSBroker('nats://127.0.0.1:1', connect_timeout=0.5)
    try:
        await live_bus.transport.ping()
        await live_broker.transport.ping()
        with pytest.raises(ConnectionFailed, match=re.escape('cannot connect to NATS at nats://127.0.0.1:1')):
            await dead.transport.ping()
    finally:
        for item in (live_bus, live_broker, dead):
            await item.close()


@pytest.mark.parametrize('dsn', ['nats://user:s3cret-pw@127.0.0.1:1', 'nats://s3cret-pw@127.0.0.1:1'])
async def test_credentials_never_show(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    broker, bus = NATSBroker(dsn, connect_timeout=0.5), NATSSignalBus(dsn, connect_timeout=0.5)
    try:
        assert 's3cret-pw' not in repr(broker) + repr(bus)
        with pytest.raises(ConnectionFailed) as failed:
            await broker.queue_length('nothing')
        with pytest.raises(ConnectionFailed) as failed_bus:
            await bus.transport.ping()
        shown = str(failed.value) + str(failed_bus.value)
        assert '127.0.0.1:1' in shown and 's3cret-pw' not in shown
    finally:
        await broker.close()
        await bus.close()
    assert 's3cret-pw' not in caplog.text


async def test_a_wrong_password_is_a_clear_error_without_it(unique: str) -> None:
    """Credentials go to the server (this one takes none, so it refuses them)."""
    from tests.nats_support import private_nats

    async with private_nats() as server:
        await server.start('--user', 'agent', '--pass', 'right-pw')
        good = NATSBroker(f'nats://agent:right-pw@127.0.0.1:{server.port}')
        bad = NATSBroker(f'nats://agent:wrong-pw@127.0.0.1:{server.port}', connect_timeout=1)
        try:
            await good.transport.ping()
            with pytest.raises(ConnectionFailed) as refused:
                await bad.transport.ping()
            assert 'wrong-pw' not in str(refused.value) and 'agent:***@' in str(refused.value)
        finally:
            await good.close()
            await bad.close()


def test_dead_letters_cli_on_nats(unique: str, start: Starter) -> None:
    """A ``nats://`` DSN is served by the NATS backend: list, show, requeue, purge."""
    queue = Queue(f'cli_dead_{unique}', Job)
    broker = NATSBroker(NATS_DSN)

    async def prepare() -> None:
        class Failing(MicroAgent):
            @consumer(queue, max_retries=0)
            async def work(self, job: Job) -> None:
                raise ValueError(f'cannot handle {job.job_id}')

        async with Failing(broker=broker):
            await broker[queue].send_many([Job(job_id=1), Job(job_id=2)])
            await eventually(lambda: _dead(broker, queue, 2), timeout=10)
        await broker.close()

    async def state() -> tuple[int, int]:
        checker = NATSBroker(NATS_DSN)
        try:
            return await checker.queue_length(queue.name), await checker.dead_letter_count(queue.name)
        finally:
            await checker.close()

    asyncio.run(prepare())
    try:
        listing = start('microagent', 'dead-letters', 'list', queue.name, '--broker', NATS_DSN)
        assert listing.wait() == 0, listing.output
        assert listing.output.startswith(f"2 dead letters on queue '{queue.name}'")
        show = start('microagent', 'dead-letters', 'show', queue.name, '1', '--broker', NATS_DSN)
        assert show.wait() == 0, show.output
        assert show.output.endswith('body:\n{"job_id":2}\n') and 'cannot handle 2' in show.output
        requeue = start('microagent', 'dead-letters', 'requeue', queue.name, '0', '--broker', NATS_DSN)
        assert requeue.wait() == 0, requeue.output
        purge = start('microagent', 'dead-letters', 'purge', queue.name, '--all', '--broker', NATS_DSN)
        assert purge.wait() == 0, purge.output
        assert asyncio.run(state()) == (1, 0)
        unknown = start('microagent', 'dead-letters', 'list', f'typo_{unique}', '--broker', NATS_DSN)
        assert unknown.wait() == 2, unknown.output
    finally:
        asyncio.run(delete_nats_streams([broker]))
