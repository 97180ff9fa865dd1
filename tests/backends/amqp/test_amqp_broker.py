"""What AMQPBroker does on RabbitMQ beyond the conformance suite: the server layout, prefetch,
the attempt and reason headers, the 1.x ``autoack`` option and ``amqp`` keyword, 1.x interop."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiormq
import msgspec
import pytest
from pamqp import commands as spec

from microagent import DeclarationError, Exchange, MicroAgent, Queue, consumer
from microagent.backends.amqp import AMQPBroker, AMQPMeta
from tests.amqp_support import Servers
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.amqp


class Job(msgspec.Struct, frozen=True):
    job_id: int


async def _length_is(broker: AMQPBroker, queue: Queue[Any], expected: int) -> bool:
    return await broker[queue].length() == expected


async def test_messages_are_persistent_json_on_a_durable_queue(amqp: Servers, unique: str) -> None:
    queue = Queue(f'durable_{unique}', Job)
    await amqp.broker()[queue].send(Job(job_id=1))
    channel = await amqp.raw()
    await channel.queue_declare(queue.name, durable=True)  # same options: no PRECONDITION_FAILED
    message = await channel.basic_get(queue.name, no_ack=True)
    assert message.body == b'{"job_id":1}'
    assert message.header.properties.delivery_mode == 2
    assert message.header.properties.content_type == 'application/json'
    await amqp.broker()[queue].send_many([Job(job_id=i) for i in range(3)])
    ids = {(await channel.basic_get(queue.name, no_ack=True)).header.properties.message_id for _ in range(3)}
    assert len(ids) == 3 and None not in ids  # each message has its own id


async def test_a_queue_sent_to_before_any_consumer_keeps_its_messages(amqp: Servers, unique: str) -> None:
    queue = Queue(f'early_{unique}', Job)
    await amqp.broker()[queue].send_many([Job(job_id=i) for i in range(3)])
    got = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            got.add(job.job_id)

    async with Worker(broker=amqp.broker()):
        assert sorted(await got.wait(3)) == [0, 1, 2]


async def test_a_queue_deleted_behind_the_broker_is_declared_again_on_send(
        amqp: Servers, unique: str) -> None:
    queue = Queue(f'vanishing_{unique}', Job)
    bound = amqp.broker()[queue]
    await bound.send(Job(job_id=1))
    channel = await amqp.raw()
    await channel.queue_delete(queue.name)
    await bound.send_many([Job(job_id=2), Job(job_id=3)])  # not silently dropped by the default exchange
    assert await bound.length() == 2


async def test_prefetch_is_the_consumer_concurrency(amqp: Servers, unique: str) -> None:
    queue = Queue(f'prefetch_{unique}', Job)
    started = Collector()
    release = asyncio.Event()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=2)
        async def work(self, job: Job) -> None:
            started.add(job.job_id)
            await release.wait()

    broker = amqp.broker()
    await broker[queue].send_many([Job(job_id=i) for i in range(10)])
    async with Worker(broker=broker):
        await started.wait(2)
        await eventually(lambda: _length_is(broker, queue, 8))  # two unacked, eight still on the server
        assert len(started.items) == 2
        release.set()
        assert sorted(await started.wait(10)) == list(range(10))


async def test_retry_carries_the_attempt_header_through_a_delay_queue(amqp: Servers, unique: str) -> None:
    queue = Queue(f'retried_{unique}', Job)
    seen = Collector()

    class Worker(MicroAgent):
        @consumer(queue, max_retries=2, retry_delay=0.05)
        async def work(self, job: Job, *, amqp: AMQPMeta) -> None:
            seen.add((amqp.headers.get('x-attempt'), amqp.headers.get('x-reason')))
            if len(seen.items) < 3:
                raise RuntimeError(f'try {len(seen.items)}')

    broker = amqp.broker()
    async with Worker(broker=broker):
        await broker[queue].send(Job(job_id=1))
        await seen.wait(3)
    assert seen.items == [(None, None), (2, 'RuntimeError: try 1'), (3, 'RuntimeError: try 2')]
    assert {f'{queue.name}.retry.50', f'{queue.name}.retry.100'} <= broker.transport.declared_queues
    channel = await amqp.raw()
    delay = await channel.queue_declare(f'{queue.name}.retry.100', passive=True)
    assert delay.message_count == 0  # the message went back to the queue when its delay was over


async def test_dead_letter_sits_in_the_dead_queue_with_reason_headers(amqp: Servers, unique: str) -> None:
    queue = Queue(f'dlx_{unique}', Job)

    class Worker(MicroAgent):
        @consumer(queue, max_retries=0)
        async def work(self, job: Job) -> None:
            raise KeyError('missing')

    broker = amqp.broker()
    async with Worker(broker=broker):
        await broker[queue].send(Job(job_id=4))
        await eventually(lambda: _dead_count_is(broker, queue, 1))
    first = await broker[queue].dead_letters()
    assert first == await broker[queue].dead_letters()  # listing leaves them where they are
    assert await broker[queue].dead_letter_count() == 1
    channel = await amqp.raw()
    message = await channel.basic_get(f'{queue.name}.dead', no_ack=True)
    headers = message.header.properties.headers or {}
    assert message.body == b'{"job_id":4}'
    assert headers['x-reason'] == "KeyError: 'missing'" and headers['x-attempt'] == 1
    assert headers['x-dead-at'] == pytest.approx(first[0].time)


async def _dead_count_is(broker: AMQPBroker, queue: Queue[Any], expected: int) -> bool:
    return await broker[queue].dead_letter_count() == expected


async def test_requeued_dead_letters_start_again_at_attempt_one(amqp: Servers, unique: str) -> None:
    queue = Queue(f'again_{unique}', Job)
    broker = amqp.broker()
    channel = await amqp.raw()
    await broker[queue].declare()
    await channel.basic_publish(b'{"job_id":1}', routing_key=f'{queue.name}.dead', properties=spec.Basic.Properties(
        headers={'x-attempt': 4, 'x-reason': 'old', 'trace': 'kept'}))
    assert await broker[queue].requeue_dead_letters() == 1
    message = await channel.basic_get(queue.name, no_ack=True)
    assert message.header.properties.headers == {'trace': 'kept'}


async def test_autoack_false_leaves_acking_to_the_handler(amqp: Servers, unique: str) -> None:
    acked = Queue(name=f'acked_{unique}')
    forgotten = Queue(name=f'forgotten_{unique}')
    got = Collector()

    class Legacy(MicroAgent):
        @consumer(acked, autoack=False)
        async def acking(self, amqp: AMQPMeta, **kwargs: Any) -> None:
            await amqp.channel.basic_ack(amqp.delivery_tag)  # the 1.x way
            got.add(('acked', kwargs))

        @consumer(forgotten, autoack=False)
        async def forgetting(self, **kwargs: Any) -> None:
            got.add(('forgotten', {k: v for k, v in kwargs.items() if k != 'amqp'}))

    broker = amqp.broker()
    async with Legacy(broker=broker):
        await getattr(broker, acked.name).send({'n': 1})
        await getattr(broker, forgotten.name).send({'n': 2})
        assert sorted(await got.wait(2), key=str) == [('acked', {'n': 1}), ('forgotten', {'n': 2})]
        assert await broker[forgotten].length() == 0  # delivered, not acked
    # the agent stopped without acking: the message is back on the queue, the acked one is gone
    assert await broker[forgotten].length() == 1
    assert await broker[acked].length() == 0


async def test_handler_that_acks_itself_then_fails_is_not_retried(amqp: Servers, unique: str) -> None:
    queue = Queue(f'self_acked_{unique}', Job)
    calls = Collector()

    class Worker(MicroAgent):
        @consumer(queue, autoack=False, max_retries=3, retry_delay=0.01)
        async def work(self, job: Job, *, amqp: AMQPMeta) -> None:
            await amqp.ack()
            calls.add(job.job_id)
            raise RuntimeError('after the ack')

    broker = amqp.broker()
    async with Worker(broker=broker):
        await broker[queue].send(Job(job_id=1))
        await calls.wait(1)
        await broker[queue].send(Job(job_id=2))  # the channel survived: no double ack
        await calls.wait(2)
    assert calls.items == [1, 2]
    assert await broker[queue].length() == 0 and await broker[queue].dead_letter_count() == 0


async def test_a_message_the_handler_rejects_goes_to_the_dead_letters(amqp: Servers, unique: str) -> None:
    queue = Queue(f'refused_{unique}', Job)

    class Picky(MicroAgent):
        @consumer(queue, autoack=False)
        async def work(self, job: Job, *, amqp: AMQPMeta) -> None:
            await amqp.reject(requeue=False)

    broker = amqp.broker()
    async with Picky(broker=broker):
        await broker[queue].send(Job(job_id=3))
        await eventually(lambda: _dead_count_is(broker, queue, 1))
    (letter,) = await broker[queue].dead_letters()
    assert (letter.body, letter.reason) == (b'{"job_id":3}', 'rejected by the handler')
    assert await broker[queue].length() == 0


async def test_a_1x_producer_on_the_default_exchange_is_consumed(amqp: Servers, unique: str) -> None:
    queue = Queue(name=f'legacy_{unique}', schema={'type': 'object', 'required': ['text']})
    got = Collector()

    class Legacy(MicroAgent):
        @consumer(queue)
        async def work(self, text: str, **kwargs: Any) -> None:
            got.add((text, kwargs['amqp'].routing_key))

    broker = amqp.broker()
    await broker[queue].declare()
    channel = await amqp.raw()
    await channel.basic_publish(b'{"text": "from 1.x"}', routing_key=queue.name)
    async with Legacy(broker=broker):
        assert await got.wait(1) == [('from 1.x', queue.name)]


async def test_exchange_types_follow_the_declarations(amqp: Servers, unique: str) -> None:
    fan = Queue(f'fan_{unique}', Job, exchange=f'fanx_{unique}')
    topic = Queue(f'topic_{unique}', Job, exchange=f'topx_{unique}', topics=['a.*'])
    broker = amqp.broker()
    await broker[fan].declare()
    await broker[topic].declare()
    channel = await amqp.raw()
    await channel.exchange_declare(f'fanx_{unique}', exchange_type='fanout', durable=True)
    await channel.exchange_declare(f'topx_{unique}', exchange_type='topic', durable=True)
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match=f'topx_{unique}'):
        await channel.exchange_declare(f'topx_{unique}', exchange_type='fanout', durable=True)
    # the server routes by those types: fanout ignores the key, topic matches 'a.*' only
    channel = await amqp.raw()  # the refusal closed the other channel
    await channel.basic_publish(b'{"job_id":1}', exchange=f'fanx_{unique}', routing_key='any.key')
    await channel.basic_publish(b'{"job_id":2}', exchange=f'topx_{unique}', routing_key='b.c')
    await channel.basic_publish(b'{"job_id":3}', exchange=f'topx_{unique}', routing_key='a.c')
    await eventually(lambda: _length_is(broker, fan, 1))
    await eventually(lambda: _length_is(broker, topic, 1))  # routed in order: 'b.c' was not
    message = await channel.basic_get(topic.name, no_ack=True)
    assert message.body == b'{"job_id":3}'


async def test_an_exchange_of_another_type_is_a_clear_error(amqp: Servers, unique: str) -> None:
    amqp.exchanges.add(f'direct_{unique}')
    channel = await amqp.raw()
    await channel.exchange_declare(f'direct_{unique}', exchange_type='direct', durable=True)
    queue = Queue(f'mismatch_{unique}', Job, exchange=f'direct_{unique}')
    broker = amqp.broker()
    with pytest.raises(DeclarationError, match=f"exchange 'direct_{unique}'.*fanout"):
        await broker[queue].declare()
    assert await broker[queue].length() == 0  # the broker's channels recover from the refusal


async def test_dsn_password_stays_out_of_repr_errors_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match='amqp://'):
        AMQPBroker('redis://u:hunter2@127.0.0.1/')
    broker = AMQPBroker('amqp://guest:hunter2@127.0.0.1:1/', reconnect_timeout=0.5)
    assert 'hunter2' not in repr(broker)
    queue = Queue(f'unreachable_{id(broker)}', Job)
    with caplog.at_level(logging.WARNING), pytest.raises(ConnectionError) as error:
        await broker[queue].send(Job(job_id=1))
    await broker.close()
    assert 'hunter2' not in str(error.value) and 'hunter2' not in caplog.text
    assert 'amqp://guest:***@127.0.0.1:1/' in str(error.value)


async def test_1x_send_keywords_properties_exchange_and_topic(amqp: Servers, unique: str) -> None:
    topic = Queue(f'kwtopic_{unique}', Job, exchange=f'kwx_{unique}', topics=['a.*'])
    plain = Queue(f'kwplain_{unique}', Job)
    broker = amqp.broker()
    await broker[topic].declare()
    channel = await amqp.raw()
    await broker[plain].send(Job(job_id=1), properties={'priority': 5, 'type': 'job', 'headers': {'k': 'v'}})
    message = await channel.basic_get(plain.name, no_ack=True)
    props = message.header.properties
    assert (props.priority, props.message_type, props.headers, props.delivery_mode) == (5, 'job', {'k': 'v'}, 2)
    await broker[topic].send(Job(job_id=2), topic='a.b')  # through the queue's exchange, the topic as key
    await broker[plain].send(Job(job_id=3), exchange=f'kwx_{unique}', topic='a.c')
    await eventually(lambda: _length_is(broker, topic, 2))
    first = await channel.basic_get(topic.name, no_ack=True)
    assert (first.exchange, first.routing_key) == (f'kwx_{unique}', 'a.b')
    with pytest.raises(LookupError, match=f"exchange 'kwx_{unique}' routed the message to no queue"):
        await broker[topic].send(Job(job_id=4), topic='b.b')
    with pytest.raises(TypeError, match=f"queue 'kwplain_{unique}': unknown AMQP properties 'colour'"):
        await broker[plain].send(Job(job_id=5), properties={'colour': 'red'})
    with pytest.raises(TypeError, match=r"topic 'a\.b' needs an exchange"):
        await broker[plain].send(Job(job_id=6), topic='a.b')
    assert await broker[plain].length() == 0


async def test_send_through_a_missing_exchange_is_an_error(amqp: Servers, unique: str) -> None:
    queue = Queue(f'kwmissing_{unique}', Job)
    broker = amqp.broker()
    with pytest.raises(LookupError, match=f"queue 'kwmissing_{unique}': no exchange 'nope_{unique}'"):
        await broker[queue].send(Job(job_id=1), exchange=f'nope_{unique}')
    await broker[queue].send(Job(job_id=2))  # the broker goes on
    assert await broker[queue].length() == 1


async def test_the_exchange_type_is_the_declared_one(amqp: Servers, unique: str) -> None:
    events = Exchange(f'declared_{unique}', 'topic')
    audit = Queue(f'declared_audit_{unique}', Job, exchange=events)  # no topics: binds '#'
    broker = amqp.broker()
    await broker[audit].declare()
    channel = await amqp.raw()
    await channel.exchange_declare(events.name, exchange_type='topic', durable=True)  # same type: accepted
    await broker.publish(events.name, Job(job_id=1), routing_key='any.key')
    await eventually(lambda: _length_is(broker, audit, 1))
