"""Envelope headers on RabbitMQ: they travel natively (the AMQP headers table, the ids also as
properties, as any AMQP client reads them), messages from 1.x senders without headers are handled,
and a message keeps its id through a retry's delay queue, the dead letters and a requeue."""
from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from microagent import MicroAgent, Queue, Signal, consumer, receiver
from microagent.backends.amqp import AMQPQueueTransport
from microagent.message import Envelope, Message, new_headers
from microagent.transport import Delivery
from tests.amqp_support import Servers
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.amqp


class Job(msgspec.Struct, frozen=True):
    job_id: int


async def _fetch_one(transport: AMQPQueueTransport, queue: Queue[Any]) -> Delivery[Any]:
    """The next message of ``queue``, however long its delay queue holds it (within 5 s)."""
    async with asyncio.timeout(5):
        while not (deliveries := await transport.fetch(queue, 1, 1.0)):
            pass
    (delivery,) = deliveries
    return delivery


async def test_headers_travel_in_the_amqp_headers_table(amqp: Servers, unique: str) -> None:
    queue = Queue(f'native_{unique}', Job)
    transport = amqp.queue_transport()
    headers = new_headers({'tenant': 'acme'})
    await transport.put(queue, [Envelope(b'{"job_id":1}', headers)])
    channel = await amqp.raw()
    message = await channel.basic_get(queue.name, no_ack=True)
    props = message.header.properties
    assert message.body == b'{"job_id":1}'
    assert props.headers == headers  # every header as a text field of the table, nothing else
    # the ids also where AMQP clients look (a fresh conversation has no correlation-id: it is the message id)
    assert (props.message_id, props.correlation_id) == (headers['message-id'], headers.get('correlation-id'))
    assert (props.content_type, props.delivery_mode) == ('application/json', 2)


async def test_a_1x_message_without_headers_is_received(amqp: Servers, unique: str) -> None:
    queue = Queue(f'bare_{unique}', Job)
    transport = amqp.queue_transport()
    await transport.declare(queue)
    channel = await amqp.raw()
    await channel.basic_publish(b'{"job_id":2}', routing_key=queue.name,
                                properties=spec.Basic.Properties(delivery_mode=2, headers={'n': 1}))
    delivery = await _fetch_one(transport, queue)
    await transport.ack(queue, delivery)
    assert delivery.envelope.body == b'{"job_id":2}'
    assert (delivery.attempt, delivery.redelivered) == (1, False)
    headers = delivery.envelope.headers or {}
    assert set(headers) <= {'message-id'}  # at most the id aiormq's publish put in the properties
    message = Message.from_headers(delivery.envelope.headers, attempt=delivery.attempt)
    assert message.attempt == 1 and message.correlation_id == message.message_id
    assert dict(message.headers) == {}  # the table's non-text field is no header of the envelope


async def test_a_message_keeps_its_ids_through_a_retry_the_dead_letters_and_a_requeue(
        amqp: Servers, unique: str) -> None:
    queue = Queue(f'kept_{unique}', Job)
    transport = amqp.queue_transport()
    sent = new_headers({'tenant': 'acme'})
    await transport.put(queue, [Envelope(b'{"job_id":3}', sent)])
    first = await _fetch_one(transport, queue)
    await transport.retry(queue, first, 0.05, 'RuntimeError: try 1')
    second = await _fetch_one(transport, queue)  # back from the delay queue
    assert second.attempt == 2
    assert second.envelope.headers == sent  # the bookkeeping (x-attempt, x-reason) stays out of them
    await transport.dead_letter(queue, second, 'RuntimeError: try 2')
    (letter,) = await transport.dead_letters(queue.name)
    assert (letter.reason, letter.attempts, letter.envelope.headers) == ('RuntimeError: try 2', 2, sent)
    assert await transport.requeue_dead_letters(queue.name) == 1
    again = await _fetch_one(transport, queue)
    await transport.ack(queue, again)
    assert (again.attempt, again.envelope.headers) == (1, sent)


async def test_bus_headers_and_rpc_properties_on_the_wire(amqp: Servers, unique: str) -> None:
    caller, answerer = amqp.bus_transport(), amqp.bus_transport()
    heard = Collector()

    async def on_signal(name: str, sender: str, envelope: Envelope) -> None:
        heard.add((name, sender, envelope))

    await answerer.subscribe([f'ask_{unique}'], on_signal)
    tap = await _tap(amqp)
    request = new_headers({'tenant': 'acme'}, reply_to=caller.reply_to, request_id='r1')
    async def on_answer(envelope: Envelope) -> None:
        heard.add(envelope)

    await caller.receive_replies(on_answer)
    await caller.publish(f'ask_{unique}', 'user.agent', Envelope(b'{"n":1}', request))
    (name, sender, envelope), = await heard.wait(1)
    assert (name, sender, envelope) == (f'ask_{unique}', 'user.agent', Envelope(b'{"n":1}', request))
    (raw,) = await tap.wait(1)  # what a 1.x peer reads: the caller's queue and the request id
    props = raw.header.properties
    assert (props.reply_to, props.correlation_id, props.message_id) == (caller.reply_to, 'r1', request['message-id'])
    assert props.headers == request
    answer = {**new_headers(), 'request-id': 'r1'}
    await answerer.reply(envelope.headers['reply-to'], Envelope(b'{"A.b":2}', answer))
    assert (await heard.wait(2))[1] == Envelope(b'{"A.b":2}', answer)


async def test_a_1x_request_and_answer_without_headers_are_understood(amqp: Servers, unique: str) -> None:
    bus = amqp.bus_transport()
    got = Collector()

    async def on_signal(name: str, sender: str, envelope: Envelope) -> None:
        got.add((name, sender, envelope))

    async def on_answer(envelope: Envelope) -> None:
        got.add(envelope)

    await bus.subscribe([f'legacy_{unique}'], on_signal)
    await bus.receive_replies(on_answer)
    channel = await amqp.raw()
    old_queue = f'{amqp.prefix}.bus.{uuid.uuid4().hex}'  # answers go only to a bus reply queue
    await channel.basic_publish(b'{"n":1}', exchange=amqp.prefix, routing_key=f'legacy_{unique}.old',
                                properties=spec.Basic.Properties(reply_to=old_queue, correlation_id='q7',
                                                                 message_id='m1'))
    await channel.basic_publish(b'{"Old.answer":1}', routing_key=bus.reply_to, properties=spec.Basic.Properties(
        message_type='response', correlation_id='q8', message_id='m2'))
    request, answer = sorted(await got.wait(2), key=str)
    assert request == ('legacy_' + unique, 'old', Envelope(b'{"n":1}', {'request-id': 'q7', 'reply-to': old_queue}))
    assert answer == Envelope(b'{"Old.answer":1}', {'message-id': 'm2', 'request-id': 'q8'})


async def test_a_handler_sees_one_message_id_on_every_attempt_and_in_the_dead_letter(
        amqp: Servers, unique: str) -> None:
    queue = Queue(f'ids_{unique}', Job)
    seen = Collector()

    class Worker(MicroAgent):
        @consumer(queue, max_retries=1, retry_delay=0.05)
        async def work(self, job: Job, *, message: Message) -> None:
            seen.add(message)
            raise RuntimeError(f'attempt {message.attempt}')

    broker = amqp.broker()
    async with Worker(broker=broker):
        await broker[queue].send(Job(job_id=1), headers={'tenant': 'acme'})
        first, second = await seen.wait(2)
        await eventually(lambda: _dead_letters_are(broker, queue, 1))
    assert (first.attempt, second.attempt) == (1, 2)
    assert first.message_id == second.message_id and first.correlation_id == second.correlation_id
    assert dict(second.headers) == {'tenant': 'acme'}
    (letter,) = await broker[queue].dead_letters()
    assert (letter.reason, letter.attempts) == ('RuntimeError: attempt 2', 2)
    assert letter.envelope.headers is not None
    assert (letter.envelope.headers['message-id'], letter.envelope.headers['tenant']) == (first.message_id, 'acme')


async def _dead_letters_are(broker: Any, queue: Queue[Any], count: int) -> bool:
    return bool(await broker[queue].dead_letter_count() == count)


async def test_a_handler_of_a_1x_message_gets_its_amqp_message_id(amqp: Servers, unique: str) -> None:
    queue = Queue(f'legacy_ids_{unique}', Job)
    seen = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job, *, message: Message) -> None:
            seen.add((job.job_id, message))

    broker = amqp.broker()
    await broker[queue].declare()
    channel = await amqp.raw()
    await channel.basic_publish(b'{"job_id":7}', routing_key=queue.name,
                                properties=spec.Basic.Properties(message_id='legacy-7'))
    async with Worker(broker=broker):
        ((job_id, message),) = await seen.wait(1)
    assert (job_id, message.message_id, message.correlation_id) == (7, 'legacy-7', 'legacy-7')
    assert (message.attempt, dict(message.headers)) == (1, {})


async def test_a_1x_caller_gets_the_1x_answer_without_error_headers(amqp: Servers, unique: str) -> None:
    signal = Signal(f'half_{unique}', Job, returns=int)

    class Agent(MicroAgent):
        @receiver(signal)
        async def good(self, job: Job) -> int:
            return job.job_id

        @receiver(signal)
        async def bad(self, job: Job) -> int:
            raise RuntimeError('no')

    channel = await amqp.raw()
    # a plain client names its reply queue as a bus does: receivers answer to no other
    replies = await channel.queue_declare(f'{amqp.prefix}.bus.{uuid.uuid4().hex}', exclusive=True, auto_delete=True)
    assert replies.queue
    answers = Collector()

    async def on_answer(message: DeliveredMessage) -> None:
        answers.add(message)

    await channel.basic_consume(replies.queue, on_answer, no_ack=True)
    async with Agent(bus=amqp.bus()):
        await channel.basic_publish(b'{"job_id":5}', exchange=amqp.prefix, routing_key=f'{signal.name}.old',
                                    properties=spec.Basic.Properties(reply_to=replies.queue, correlation_id='q1'))
        (answer,) = await answers.wait(1)
    props = answer.header.properties
    assert (answer.body, props.correlation_id, props.message_type) == (
        msgspec.json.encode({Agent.good.__qualname__: 5}), 'q1', 'response')
    assert 'rpc-error' not in (props.headers or {})  # a 1.x caller would not read it


async def _tap(amqp: Servers) -> Collector:
    """A plain aiormq queue bound to every key of the test's exchange."""
    got = Collector()
    channel = await amqp.raw()
    await channel.exchange_declare(amqp.prefix, exchange_type='topic', durable=True)
    declared = await channel.queue_declare('', exclusive=True, auto_delete=True)
    assert declared.queue
    await channel.queue_bind(declared.queue, amqp.prefix, routing_key='#')

    async def on_message(message: DeliveredMessage) -> None:
        got.add(message)

    await channel.basic_consume(declared.queue, on_message, no_ack=True)
    return got
