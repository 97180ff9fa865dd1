"""RabbitMQ quorum queues: declared as such (with their dead letters and delay queues), per queue
or as the broker's default; a message that keeps coming back unacknowledged is dead-lettered by
RabbitMQ at the delivery limit into the same dead-letter store the engine uses (listed and
requeued through the broker API and ``microagent dead-letters``); a queue that exists with
another type is a clear error."""
from __future__ import annotations

import asyncio

import aiormq
import msgspec
import pytest

from microagent import MicroAgent, Queue, consumer
from microagent.backends.amqp import AMQPBroker
from microagent.cli.main import main
from microagent.errors import DeclarationError
from tests.amqp_support import AMQP_DSN, Servers, delete_declared, queue_types
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.amqp


class Job(msgspec.Struct, frozen=True):
    job_id: int


async def test_a_quorum_broker_declares_the_queue_its_dead_letters_and_delay_queues_quorum(
        amqp: Servers, unique: str) -> None:
    queue = Queue(f'qq_{unique}', Job)
    broker = amqp.broker(queue_type='quorum')
    await broker[queue].send(Job(job_id=1), delay=0.05)  # through a delay queue
    await eventually(lambda: _length(broker, queue, 1))
    retry_queues = [name for name in broker.transport.declared_queues if '.retry.' in name]
    assert len(retry_queues) == 1
    types = await queue_types()
    for name in (queue.name, f'{queue.name}.dead', *retry_queues):
        assert types[name] == 'quorum', name


async def test_the_queue_option_overrides_the_broker_default(amqp: Servers, unique: str) -> None:
    quorum = Queue(f'qq_own_{unique}', Job, queue_type='quorum')
    classic = Queue(f'classic_own_{unique}', Job, queue_type='classic')
    await amqp.broker()[quorum].declare()
    await amqp.broker(queue_type='quorum')[classic].declare()
    types = await queue_types()
    assert types[quorum.name] == 'quorum'
    assert types[classic.name] == 'classic'


async def test_handler_failures_retry_then_dead_letter_on_a_quorum_queue(amqp: Servers, unique: str) -> None:
    queue = Queue(f'qq_fail_{unique}', Job)
    attempts = Collector()

    class Failing(MicroAgent):
        @consumer(queue, max_retries=2, retry_delay=0.01)
        async def work(self, job: Job) -> None:
            attempts.add(job.job_id)
            raise ValueError(f'job {job.job_id} is bad')

    broker = amqp.broker(queue_type='quorum')
    async with Failing(broker=broker):
        await broker[queue].send(Job(job_id=7))
        await attempts.wait(3)
        await eventually(lambda: _dead(broker, queue, 1))
    [letter] = await broker[queue].dead_letters()
    assert (letter.attempts, letter.reason) == (3, 'ValueError: job 7 is bad')
    assert attempts.items == [7, 7, 7]


async def test_a_message_returned_past_the_delivery_limit_is_dead_lettered_and_can_be_requeued(
        amqp: Servers, unique: str) -> None:
    queue = Queue(f'qq_limit_{unique}', Job, queue_type='quorum', delivery_limit=1)
    broker = amqp.broker()
    await broker[queue].send(Job(job_id=3), headers={'tenant': 'acme'})
    ids = [await _take_and_crash(amqp, queue.name) for _ in range(2)]  # delivered, returned: twice
    assert ids[0] == ids[1] is not None
    await eventually(lambda: _dead(broker, queue, 1))
    assert await broker[queue].length() == 0

    [letter] = await broker[queue].dead_letters()
    assert 'delivery limit' in letter.reason and letter.attempts == 1 and letter.time > 0
    assert msgspec.json.decode(letter.body) == {'job_id': 3}
    headers = dict(letter.envelope.headers or {})
    assert headers['tenant'] == 'acme' and headers['message-id'] == ids[0]
    assert not [name for name in headers if name.startswith('x-')]

    assert await broker[queue].requeue_dead_letters() == 1
    handled = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            handled.add(job.job_id)

    async with Worker(broker=broker):
        assert await handled.wait(1) == [3]
    assert await broker[queue].dead_letter_count() == 0


def test_the_dead_letters_command_lists_and_requeues_delivery_limit_dead_letters(
        unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    queue = Queue(f'qq_cli_{unique}', Job, queue_type='quorum', delivery_limit=0)
    broker = AMQPBroker(AMQP_DSN)
    args = ['--broker', AMQP_DSN, '--backend', 'microagent.backends.amqp.AMQPBroker']

    async def dead_letter_one() -> None:
        servers = Servers()
        try:
            await broker[queue].send(Job(job_id=5))
            await _take_and_crash(servers, queue.name)
            await eventually(lambda: _dead(broker, queue, 1))
        finally:
            await servers.close()

    try:
        asyncio.run(dead_letter_one())
        assert main(['dead-letters', 'list', queue.name, *args]) == 0
        out = capsys.readouterr().out
        assert f"1 dead letters on queue '{queue.name}'" in out and 'delivery limit' in out
        assert main(['dead-letters', 'requeue', queue.name, *args]) == 0
        assert capsys.readouterr().out.startswith(f"Requeued 1 dead letters on queue '{queue.name}'")
        assert asyncio.run(_count(queue)) == (1, 0)
    finally:
        asyncio.run(_cleanup(broker))


async def test_declaring_an_existing_queue_with_another_type_names_the_queue(amqp: Servers, unique: str) -> None:
    classic, quorum = Queue(f'was_classic_{unique}', Job), Queue(f'was_quorum_{unique}', Job)
    await amqp.broker()[classic].declare()
    await amqp.broker(queue_type='quorum')[quorum].declare()
    with pytest.raises(DeclarationError, match=f"queue '{classic.name}' exists on RabbitMQ as a classic queue, "
                                               f"declared here as quorum: RabbitMQ cannot change the type"):
        await amqp.broker(queue_type='quorum')[classic].declare()
    with pytest.raises(DeclarationError, match=f"queue '{quorum.name}' exists on RabbitMQ with other arguments "
                                               f"than a classic queue \\(another type"):
        await amqp.broker()[quorum].send(Job(job_id=1))
    broker = amqp.broker(queue_type='quorum', delivery_limit=3)
    with pytest.raises(DeclarationError, match=f"queue '{quorum.name}' exists on RabbitMQ with other arguments "
                                               f"than a quorum queue with delivery limit 3"):
        await broker[quorum].declare()
    await broker[Queue(f'fine_{unique}', Job)].declare()  # the broker goes on after the error


def test_bad_queue_options_are_refused(unique: str) -> None:
    with pytest.raises(DeclarationError, match=f"queue 'bad_{unique}': queue_type is 'stream'; expected one of "
                                               f"'classic', 'quorum'"):
        Queue(f'bad_{unique}', Job, queue_type='stream')  # type: ignore[call-overload]
    with pytest.raises(DeclarationError, match=f"queue 'bad2_{unique}': delivery_limit is -1"):
        Queue(f'bad2_{unique}', Job, delivery_limit=-1)
    with pytest.raises(DeclarationError, match="AMQP broker: queue_type is 'lazy'"):
        AMQPBroker(AMQP_DSN, queue_type='lazy')  # type: ignore[arg-type]


async def test_a_delivery_limit_needs_a_quorum_queue(amqp: Servers, unique: str) -> None:
    queue = Queue(f'limited_{unique}', Job, delivery_limit=2)
    with pytest.raises(DeclarationError, match=f"queue '{queue.name}': delivery_limit needs a quorum queue"):
        await amqp.broker()[queue].declare()
    await amqp.broker(queue_type='quorum')[queue].declare()
    assert (await queue_types())[queue.name] == 'quorum'


async def _take_and_crash(amqp: Servers, name: str) -> str | None:
    """Take one message and close the channel without acknowledging it (a consumer that crashed);
    return its message id."""
    channel = await amqp.raw()
    got: asyncio.Future[aiormq.abc.DeliveredMessage] = asyncio.get_running_loop().create_future()

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        if not got.done():
            got.set_result(message)

    await channel.basic_qos(prefetch_count=1)
    await channel.basic_consume(name, on_message)
    message = await asyncio.wait_for(got, 10)
    await channel.close()
    return message.header.properties.message_id


async def _length(broker: AMQPBroker, queue: Queue[Job], count: int) -> bool:
    return await broker[queue].length() == count


async def _dead(broker: AMQPBroker, queue: Queue[Job], count: int) -> bool:
    return await broker[queue].dead_letter_count() == count


async def _count(queue: Queue[Job]) -> tuple[int, int]:
    broker = AMQPBroker(AMQP_DSN)
    try:
        return await broker[queue].length(), await broker[queue].dead_letter_count()
    finally:
        await broker.close()


async def _cleanup(broker: AMQPBroker) -> None:
    await broker.close()
    await delete_declared([broker])
