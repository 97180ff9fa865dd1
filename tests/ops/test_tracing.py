"""OpenTelemetry spans of the tracing middleware on the memory backend, exported to the SDK's
in-memory exporter: parent/child links across sends and handlings, the messaging attributes, error
status and the outcome of retries and dead letters, RPC answers, messages without a trace, and the
no-op provider that records nothing and keeps the engine's propagation."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

from microagent import Message, MicroAgent, Middleware, Next, Queue, Sending, Signal, consumer, periodic, receiver
from microagent.backends.memory import MemoryBroker, MemorySignalBus
from microagent.message import Envelope, parse_traceparent
from microagent.ops.tracing import TracingMiddleware
from tests.helpers import Collector


class Job(msgspec.Struct, frozen=True):
    job_id: int


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def engines() -> tuple[MemorySignalBus, MemoryBroker]:
    dsn = f'memory://{uuid.uuid4().hex}'
    return MemorySignalBus(dsn), MemoryBroker(dsn)


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, f'{name}: {[span.name for span in spans]}'
    return found[0]


def is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.parent is not None and child.context is not None and parent.context is not None
    return bool(child.parent.span_id == parent.context.span_id and child.context.trace_id == parent.context.trace_id)


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f'00-{span.context.trace_id:032x}-{span.context.span_id:016x}-{span.context.trace_flags:02x}'


async def wait_spans(exporter: InMemorySpanExporter, count: int) -> tuple[ReadableSpan, ...]:
    """The finished spans, once ``count`` of them are (a span ends just after its handler returns)."""
    async with asyncio.timeout(5):
        while len(exporter.get_finished_spans()) < count:  # noqa: ASYNC110 - the SDK exports synchronously
            await asyncio.sleep(0)
    return exporter.get_finished_spans()


async def test_a_signal_and_the_queue_message_it_causes_make_one_trace(
        provider: TracerProvider, exporter: InMemorySpanExporter, engines: tuple[MemorySignalBus, MemoryBroker],
        unique: str) -> None:
    signal = Signal(f'trace_sig_{unique}', Job)
    queue = Queue(f'trace_q_{unique}', Job)
    seen = Collector()

    class Relay(MicroAgent):
        @receiver(signal)
        async def heard(self, job: Job, message: Message) -> None:
            seen.add(('signal', message))
            await self.broker[queue].send(job)

        @consumer(queue)
        async def work(self, job: Job, message: Message) -> None:
            seen.add(('queue', message))

    bus, broker = engines
    async with Relay(bus=bus, broker=broker, middlewares=[TracingMiddleware(provider)]):
        with provider.get_tracer('test').start_as_current_span('request') as request:
            await bus[signal].send('tester', Job(job_id=1))
        await seen.wait(2)
        spans = await wait_spans(exporter, 5)
    got = dict(seen.items)
    publish, heard = one(spans, f'publish {signal.name}'), one(spans, f'process {signal.name}')
    send, work = one(spans, f'send {queue.name}'), one(spans, f'process {queue.name}')
    root = one(spans, 'request')
    assert [span.kind for span in (publish, heard, send, work)] == [SpanKind.PRODUCER, SpanKind.CONSUMER,
                                                                     SpanKind.PRODUCER, SpanKind.CONSUMER]
    assert is_child(publish, root) and is_child(heard, publish) and is_child(send, heard) and is_child(work, send)
    assert got['signal'].traceparent == traceparent_of(publish)  # the context travels in the headers
    assert got['queue'].traceparent == traceparent_of(send)
    assert got['queue'].trace_id == f'{request.get_span_context().trace_id:032x}'  # what logs show
    assert publish.attributes == {
        'messaging.system': 'memory', 'messaging.destination.name': signal.name,
        'messaging.operation.type': 'send', 'messaging.operation.name': 'publish',
        'messaging.message.id': got['signal'].message_id,
        'messaging.message.conversation_id': got['signal'].correlation_id,
        'microagent.kind': 'signal', 'microagent.sender': 'tester'}
    assert work.attributes == {
        'messaging.system': 'memory', 'messaging.destination.name': queue.name,
        'messaging.operation.type': 'process', 'messaging.operation.name': 'process',
        'messaging.message.id': got['queue'].message_id,
        'messaging.message.conversation_id': got['signal'].correlation_id,  # the conversation goes on
        'microagent.message.attempt': 1, 'microagent.agent': 'Relay', 'microagent.handler': 'Relay.work',
        'microagent.kind': 'consumer', 'microagent.outcome': 'ok'}
    assert all(span.status.status_code is StatusCode.UNSET for span in spans)


async def test_a_periodic_run_is_the_root_of_what_it_sends(
        provider: TracerProvider, exporter: InMemorySpanExporter, engines: tuple[MemorySignalBus, MemoryBroker],
        unique: str) -> None:
    signal = Signal(f'trace_tick_{unique}', Job)
    seen = Collector()

    class Ticker(MicroAgent):
        @periodic(period=3600, timeout=5)
        async def tick(self) -> None:
            await self.bus[signal].send('ticker', Job(job_id=1))

        @receiver(signal)
        async def heard(self, job: Job) -> None:
            seen.add(job)

    bus, broker = engines
    async with Ticker(bus=bus, broker=broker, middlewares=[TracingMiddleware(provider)]):
        await seen.wait(1)
        spans = await wait_spans(exporter, 3)
    run = one(spans, 'periodic Ticker.tick')
    publish, heard = one(spans, f'publish {signal.name}'), one(spans, f'process {signal.name}')
    assert run.kind is SpanKind.INTERNAL and run.parent is None
    assert is_child(publish, run) and is_child(heard, publish)
    assert run.attributes == {'microagent.agent': 'Ticker', 'microagent.handler': 'Ticker.tick',
                              'microagent.kind': 'periodic', 'microagent.outcome': 'ok'}


async def test_a_failing_consumer_is_retried_then_dead_lettered_under_one_producer(
        provider: TracerProvider, exporter: InMemorySpanExporter, engines: tuple[MemorySignalBus, MemoryBroker],
        unique: str) -> None:
    queue = Queue(f'trace_fail_{unique}', Job)

    class Failing(MicroAgent):
        @consumer(queue, max_retries=1, retry_delay=0.01)
        async def work(self, job: Job) -> None:
            raise RuntimeError(f'job {job.job_id} cannot be done')

    _, broker = engines
    async with Failing(broker=broker, middlewares=[TracingMiddleware(provider)]):
        await broker[queue].send(Job(job_id=7))
        spans = await wait_spans(exporter, 3)
    send = one(spans, f'send {queue.name}')
    first, last = named(spans, f'process {queue.name}')
    assert is_child(first, send) and is_child(last, send)
    assert first.attributes is not None and last.attributes is not None
    attempt, outcome = 'microagent.message.attempt', 'microagent.outcome'
    assert (first.attributes[attempt], first.attributes[outcome]) == (1, 'retried')
    assert first.attributes['microagent.retry_delay'] == pytest.approx(0.01)
    assert (last.attributes[attempt], last.attributes[outcome]) == (2, 'dead_lettered')
    assert first.attributes['messaging.message.id'] == last.attributes['messaging.message.id']
    for span in (first, last):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == 'RuntimeError: job 7 cannot be done'
        assert span.attributes is not None and span.attributes['error.type'] == 'RuntimeError'
        assert [event.name for event in span.events] == ['exception']


async def test_a_timed_out_consumer_says_so(
        provider: TracerProvider, exporter: InMemorySpanExporter, engines: tuple[MemorySignalBus, MemoryBroker],
        unique: str) -> None:
    queue = Queue(f'trace_slow_{unique}', Job)

    class Slow(MicroAgent):
        @consumer(queue, timeout=0.05)
        async def work(self, job: Job) -> None:
            await asyncio.Event().wait()  # never set: only the timeout ends it

    _, broker = engines
    async with Slow(broker=broker, middlewares=[TracingMiddleware(provider)]):
        await broker[queue].send(Job(job_id=1))
        spans = await wait_spans(exporter, 2)
    work = one(spans, f'process {queue.name}')
    assert work.attributes is not None and work.attributes['microagent.outcome'] == 'timed_out'
    assert work.attributes['error.type'] == 'TimeoutError'
    assert work.status.status_code is StatusCode.ERROR


async def test_an_rpc_answer_is_a_child_of_the_receiver_linked_to_the_call(
        provider: TracerProvider, exporter: InMemorySpanExporter, engines: tuple[MemorySignalBus, MemoryBroker],
        unique: str) -> None:
    signal = Signal(f'trace_rpc_{unique}', Job, returns=int)

    class Doubler(MicroAgent):
        @receiver(signal)
        async def double(self, job: Job) -> int:
            return job.job_id * 2

    bus, broker = engines
    caller_bus = MemorySignalBus(bus.dsn).use(TracingMiddleware(provider))
    try:
        async with Doubler(bus=bus, broker=broker, middlewares=[TracingMiddleware(provider)]):
            with provider.get_tracer('test').start_as_current_span('caller'):
                answers = await caller_bus[signal].call('tester', Job(job_id=21))
            spans = await wait_spans(exporter, 4)
    finally:
        await caller_bus.close()
    assert list(answers.values()) == [42]
    caller, call = one(spans, 'caller'), one(spans, f'call {signal.name}')
    handled, reply = one(spans, f'process {signal.name}'), one(spans, f'reply {signal.name}')
    assert is_child(call, caller) and is_child(handled, call) and is_child(reply, handled)
    assert reply.kind is SpanKind.PRODUCER and call.kind is SpanKind.PRODUCER
    assert call.context is not None
    assert [link.context.span_id for link in reply.links] == [call.context.span_id]
    assert reply.attributes is not None and reply.attributes['messaging.operation.name'] == 'reply'


async def test_messages_without_a_valid_trace(
        provider: TracerProvider, exporter: InMemorySpanExporter, engines: tuple[MemorySignalBus, MemoryBroker],
        unique: str) -> None:
    queue = Queue(f'trace_foreign_{unique}', Job)
    seen = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job, message: Message) -> None:
            seen.add(message)

    _, broker = engines
    untraced = MemoryBroker(broker.dsn)  # a sender without the middleware
    async with Worker(broker=broker, middlewares=[TracingMiddleware(provider)]):
        await broker.transport.put(queue, [Envelope(b'{"job_id": 1}', None)])  # a 1.x body: no headers
        await broker.transport.put(queue, [Envelope(b'{"job_id": 2}', {'message-id': 'm2', 'traceparent': 'junk'})])
        await untraced[queue].send(Job(job_id=3))  # starts a trace named by its message id, sends no header
        await seen.wait(3)
        spans = await wait_spans(exporter, 3)
    foreign, invalid, started = spans
    assert foreign.parent is None and invalid.parent is None  # new roots, in new traces
    assert foreign.context is not None and invalid.context is not None
    assert foreign.context.trace_id != invalid.context.trace_id
    message = seen.items[2]
    assert started.parent is not None and started.context is not None
    assert (f'{started.context.trace_id:032x}', f'{started.parent.span_id:016x}') == \
           (message.message_id, message.message_id[16:])  # the trace the engine and the logs name


async def test_a_failed_send_is_an_error_span(
        provider: TracerProvider, exporter: InMemorySpanExporter, engines: tuple[MemorySignalBus, MemoryBroker],
        unique: str) -> None:
    queue = Queue(f'trace_unsent_{unique}', Job)

    class Refusing(Middleware):
        async def send(self, sending: Sending, call_next: Next) -> Any:
            raise ConnectionError('the server is gone')

    _, broker = engines
    broker.use(TracingMiddleware(provider), Refusing())
    with pytest.raises(ConnectionError):
        await broker[queue].send(Job(job_id=1))
    send = one(exporter.get_finished_spans(), f'send {queue.name}')
    assert send.status.status_code is StatusCode.ERROR
    assert send.attributes is not None and send.attributes['error.type'] == 'ConnectionError'


async def test_a_batch_is_one_span_whose_context_every_message_carries(
        provider: TracerProvider, exporter: InMemorySpanExporter, engines: tuple[MemorySignalBus, MemoryBroker],
        unique: str) -> None:
    queue = Queue(f'trace_batch_{unique}', Job)
    seen = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job, message: Message) -> None:
            seen.add(message.traceparent)

    _, broker = engines
    async with Worker(broker=broker, middlewares=[TracingMiddleware(provider)]):
        await broker[queue].send_many([Job(job_id=n) for n in range(3)])
        await seen.wait(3)
        spans = await wait_spans(exporter, 4)
    send = one(spans, f'send {queue.name}')
    assert send.attributes is not None and send.attributes['messaging.batch.message_count'] == 3
    assert 'messaging.message.id' not in send.attributes
    assert seen.items == [traceparent_of(send)] * 3
    assert all(is_child(span, send) for span in named(spans, f'process {queue.name}'))


@pytest.mark.parametrize('given', [None, NoOpTracerProvider()], ids=['global unset', 'no-op provider'])
async def test_without_a_recording_provider_nothing_is_recorded_and_the_trace_goes_on(
        given: trace.TracerProvider | None, engines: tuple[MemorySignalBus, MemoryBroker], unique: str) -> None:
    signal = Signal(f'trace_noop_{unique}', Job)
    queue = Queue(f'trace_noop_{unique}', Job)
    seen = Collector()

    class Relay(MicroAgent):
        @receiver(signal)
        async def heard(self, job: Job, message: Message) -> None:
            seen.add(message)
            await self.broker[queue].send(job)

        @consumer(queue)
        async def work(self, job: Job, message: Message) -> None:
            seen.add(message)

    tracing = TracingMiddleware(given)
    bus, broker = engines
    async with Relay(bus=bus, broker=broker, middlewares=[tracing]):
        await bus[signal].send('tester', Job(job_id=1))
        first, second = await seen.wait(2)
    assert tracing._tracer is None
    parent, child = parse_traceparent(first.traceparent), parse_traceparent(second.traceparent)
    assert parent is not None and child is not None and child[0] == parent[0]  # the engine's propagation


async def test_a_global_provider_set_after_the_middleware_is_used(
        exporter: InMemorySpanExporter, provider: TracerProvider, engines: tuple[MemorySignalBus, MemoryBroker],
        unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = Queue(f'trace_late_{unique}', Job)
    _, broker = engines
    broker.use(tracing := TracingMiddleware())
    await broker[queue].send(Job(job_id=1))  # nothing records yet
    monkeypatch.setattr(trace, '_TRACER_PROVIDER', provider)  # set_tracer_provider, undone after the test
    await broker[queue].send(Job(job_id=2))
    assert [span.name for span in exporter.get_finished_spans()] == [f'send {queue.name}']
    assert tracing._tracer is not None


async def test_an_invalid_message_is_a_dead_lettered_error_span(
        provider: TracerProvider, exporter: InMemorySpanExporter, engines: tuple[MemorySignalBus, MemoryBroker],
        unique: str) -> None:
    queue = Queue(f'trace_invalid_{unique}', Job)

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job) -> None:
            raise AssertionError('an invalid message reaches no handler')

    _, broker = engines
    async with Worker(broker=broker, middlewares=[TracingMiddleware(provider)]):
        await broker.transport.put(queue, [Envelope(b'{"job_id": "one"}', {'message-id': 'm1'})])
        spans = await wait_spans(exporter, 1)
    work = one(spans, f'process {queue.name}')
    assert work.attributes is not None and work.attributes['microagent.outcome'] == 'dead_lettered'
    assert work.attributes['error.type'] == 'microagent.errors.InvalidPayload'
    assert work.status.status_code is StatusCode.ERROR


async def test_another_propagator_carries_its_own_headers(
        provider: TracerProvider, exporter: InMemorySpanExporter, engines: tuple[MemorySignalBus, MemoryBroker],
        unique: str) -> None:
    from opentelemetry import baggage
    from opentelemetry import context as otel_context
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    queue = Queue(f'trace_baggage_{unique}', Job)
    seen = Collector()

    class Worker(MicroAgent):
        @consumer(queue)
        async def work(self, job: Job, message: Message) -> None:
            seen.add((baggage.get_baggage('tenant'), dict(message.headers)))

    propagator = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    tracing = TracingMiddleware(provider, propagator)
    _, broker = engines
    async with Worker(broker=broker, middlewares=[tracing]):
        token = otel_context.attach(baggage.set_baggage('tenant', 'acme'))
        try:
            await broker[queue].send(Job(job_id=1))
        finally:
            otel_context.detach(token)
        [(tenant, headers)] = await seen.wait(1)
    assert tenant == 'acme' and headers == {'baggage': 'tenant=acme'}
