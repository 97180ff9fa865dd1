"""What RabbitMQ cannot hold is refused at once with a clear error (headers over the frame size,
delays over its timers), a message the server closes the connection over is never sent again, and
a refused login or vhost says so instead of waiting for an answer that never comes."""
from __future__ import annotations

import logging
import time

import msgspec
import pytest

import microagent.backends.amqp.link as amqp_link
from microagent import InvalidArgument, MicroAgent, Queue, Signal, consumer
from microagent.backends.amqp import AMQPBroker, AMQPSignalBus
from microagent.backends.amqp.headers import send_properties
from microagent.backends.amqp.limits import MAX_DELAY, MessageRefused, header_frame_size
from microagent.backends.amqp.link import Outgoing
from microagent.errors import ConnectionFailed
from microagent.message import Envelope
from tests.amqp_support import AMQP_DSN, Servers
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.amqp

# over RabbitMQ's default frame_max of 128 KiB, in values within the engine's 8 KiB a value
BIG = {f't{i}': 'v' * 8_000 for i in range(25)}


class Job(msgspec.Struct, frozen=True):
    n: int


def _lost_lines(caplog: pytest.LogCaptureFixture) -> int:
    return sum('lost the connection' in record.getMessage() for record in caplog.records)


async def _consumed(got: Collector, wanted: set[int]) -> None:
    while not wanted <= set(got.items):
        await got.wait(len(got.items) + 1)


async def test_headers_over_the_frame_size_are_refused_at_once_and_the_broker_goes_on(
        amqp: Servers, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    queue = Queue(f'big_headers_{unique}', Job)
    broker = amqp.broker()
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add(job.n)

    async with Worker(broker=broker):
        await broker[queue].send(Job(1))
        assert await got.wait(1) == [1]
        started = time.monotonic()
        with pytest.raises(MessageRefused, match=rf"queue '{queue.name}'.*131072") as refused:
            await broker[queue].send(Job(2), headers=BIG)
        assert isinstance(refused.value, ValueError)
        with pytest.raises(MessageRefused, match=r'message #1 of 3.*nothing was sent'):
            await broker.transport.put(queue, [Envelope(b'{"n":3}'), Envelope(b'{"n":4}', BIG),
                                               Envelope(b'{"n":5}')])
        assert time.monotonic() - started < 1.0
        await broker[queue].send(Job(6))  # the same broker sends and consumes as before
        assert await got.wait(2) == [1, 6]
    assert _lost_lines(caplog) == 0  # the connection was never broken


async def test_a_message_the_server_closes_the_connection_over_is_not_sent_again(
        amqp: Servers, unique: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amqp_link, '_frame_max', lambda channel: 0)  # the check cannot tell: the server refuses
    caplog.set_level(logging.WARNING)
    queue = Queue(f'refused_{unique}', Job)
    broker = amqp.broker()
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add(job.n)

    async with Worker(broker=broker):
        await broker[queue].send(Job(1))
        assert await got.wait(1) == [1]
        with pytest.raises(MessageRefused, match=rf"queue '{queue.name}'.*the message; not sent again.*FRAME_ERROR"):
            await broker[queue].send(Job(2), headers=BIG)
        assert _lost_lines(caplog) == 1
        with pytest.raises(MessageRefused, match=r'1 of 3 messages \(the others were sent\)'):
            await broker.transport.put(queue, [Envelope(b'{"n":3}'), Envelope(b'{"n":4}', BIG),
                                               Envelope(b'{"n":5}')])
        await _consumed(got, {3, 5})  # the others of the batch (at least once), on the same broker
        assert _lost_lines(caplog) <= 3  # the batch, then the refused one alone: never a loop
        await broker[queue].send(Job(6))
        await _consumed(got, {6})
        assert 2 not in got.items and 4 not in got.items


async def test_a_signal_with_headers_over_the_frame_size_is_refused(amqp: Servers, unique: str) -> None:
    signal = Signal(f'big_{unique}', Job)
    with pytest.raises(MessageRefused, match=rf"signal '{signal.name}'.*131072"):
        await amqp.bus()[signal].send('me', Job(1), headers=BIG)


# beyond RabbitMQ's longest delay and within the engine's (366 days; more is refused before the backend)
@pytest.mark.parametrize('delay', [MAX_DELAY + 1, MAX_DELAY * 2, 31_000_000])
async def test_a_delay_longer_than_rabbitmq_holds_names_the_queue_and_the_maximum(
        amqp: Servers, unique: str, delay: float) -> None:
    queue = Queue(f'far_{unique}', Job)
    broker = amqp.broker()
    with pytest.raises(InvalidArgument, match=rf"queue '{queue.name}'.*maximum is {MAX_DELAY:.0f}s"):
        await broker[queue].send(Job(1), delay=delay)
    assert await broker[queue].length() == 0
    assert not any('.retry.' in name for name in broker.transport.declared_queues)


async def test_the_longest_delay_is_taken(amqp: Servers, unique: str) -> None:
    queue = Queue(f'farthest_{unique}', Job)
    broker = amqp.broker()
    await broker[queue].send(Job(1), delay=MAX_DELAY)
    assert (await broker.transport.depth(queue.name)).delayed == 1


@pytest.mark.parametrize('make', [AMQPBroker, AMQPSignalBus])
async def test_a_wrong_password_says_so_at_once_without_the_password(make: type[AMQPBroker | AMQPSignalBus]) -> None:
    dsn = AMQP_DSN.replace('guest:guest@', 'guest:s3cret-pw@')
    started = time.monotonic()
    opened = make(dsn)
    try:
        with pytest.raises(ConnectionFailed, match=r"authentication refused for user 'guest'") as failed:
            await opened.ping()
    finally:
        await opened.close()
    assert time.monotonic() - started < 2.0
    assert 's3cret-pw' not in str(failed.value)


async def test_a_missing_vhost_says_so_at_once(unique: str) -> None:
    broker = AMQPBroker(AMQP_DSN.rstrip('/') + f'/missing_{unique}')
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionFailed, match=rf"vhost 'missing_{unique}' not found.*user 'guest'"):
            await broker[Queue(f'nowhere_{unique}', Job)].send(Job(1))
    finally:
        await broker.close()
    assert time.monotonic() - started < 2.0


async def test_a_message_that_only_just_fits_the_frame_is_retried_and_dead_lettered_with_a_cut_reason(
        amqp: Servers, unique: str) -> None:
    """Retry and dead-letter add ``x-attempt``, ``x-reason`` (and ``x-dead-at``) to the table: the
    reason is cut so that the headers still fit one frame, and the message still moves on."""
    queue = Queue(f'just_fits_{unique}', Job)
    broker = amqp.broker()
    frame_max = await broker.transport._publisher.frame_max()
    assert frame_max  # RabbitMQ negotiates one (131072 by default)
    body = b'{"n": 7}'

    def frame(pad: int) -> int:
        headers = {'message-id': f'just-fits-{unique}', 'pad': 'p' * pad}
        return header_frame_size(Outgoing('', queue.name, body, send_properties(headers)))

    pad = frame_max - 100 - frame(0)  # 100 bytes left in the frame: no room for a 5 KB reason
    assert frame(pad) == frame_max - 100
    attempts = Collector()

    class Worker(MicroAgent):
        @consumer(queue, max_retries=1, retry_delay=0.01)
        async def work(self, job: Job) -> None:
            attempts.add(job.n)
            raise ConnectionError('SMTP busy ' + 'y' * 5_000)

    await broker[queue].declare()
    async with Worker(broker=broker):
        await broker.transport.put(queue, [Envelope(body, {'message-id': f'just-fits-{unique}', 'pad': 'p' * pad})])
        assert await attempts.wait(2, timeout=10) == [7, 7]  # retried, with its headers and a cut reason
        await eventually(lambda: _dead(broker, queue), timeout=10)
    (letter,) = await broker[queue].dead_letters()
    assert letter.reason.startswith('ConnectionError: SMTP busy yyy')
    assert len(letter.reason.encode()) < 100
    assert letter.envelope.headers is not None and letter.envelope.headers['pad'] == 'p' * pad


async def _dead(broker: AMQPBroker, queue: Queue[Job]) -> bool:
    return bool(await broker[queue].dead_letter_count() == 1)
