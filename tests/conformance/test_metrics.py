"""Prometheus metrics on every backend: a known workload with a success, a retry, a dead letter and an
invalid message gives exactly the expected counters in the exposition text, read back with
prometheus-client's own parser (runs once per backend in tests/conformance/backends.py)."""
from __future__ import annotations

import asyncio

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from microagent import AbstractQueueBroker, MicroAgent, Queue, Signal, consumer, receiver
from microagent.ops.metrics import PrometheusMiddleware
from tests.conformance.backends import Backend, inject_raw
from tests.helpers import eventually


class Job(msgspec.Struct, frozen=True):
    job_id: int


def scraped(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text: (sample name, sorted labels) -> value."""
    text = generate_latest(registry).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_counters_of_a_known_workload(backend: Backend, unique: str) -> None:
    queue = Queue(f'metrics_{unique}', Job)
    signal = Signal(f'metrics_sig_{unique}', Job)
    registry = CollectorRegistry()
    metrics = PrometheusMiddleware(registry)

    class Worker(MicroAgent):
        @consumer(queue, max_retries=1, retry_delay=0.01)
        async def work(self, job: Job) -> None:
            if job.job_id == 2:
                raise RuntimeError('always fails')

        @receiver(signal)
        async def heard(self, job: Job) -> None:
            pass

    broker, bus = backend.broker(), backend.bus()
    async with Worker(bus=bus, broker=broker, middlewares=[metrics]):
        await broker[queue].send_many([Job(job_id=1), Job(job_id=2), Job(job_id=3)])
        await inject_raw(backend, broker, queue.name, [b'{"job_id": "not a number"}'])
        await bus[signal].send('tester', Job(job_id=1))
        await eventually(lambda: _dead_letters(broker, queue, 2))

        async def done() -> bool:
            samples = scraped(registry)
            consumed = (('agent', 'Worker'), ('handler', 'Worker.work'), ('kind', 'consumer'), ('name', queue.name))
            heard = (('agent', 'Worker'), ('handler', 'Worker.heard'), ('kind', 'receiver'), ('name', signal.name))
            return (samples.get(('microagent_messages_received_total', consumed)) == 5
                    and samples.get(('microagent_messages_handled_total', heard)) == 1)

        await eventually(done)
        await metrics.sample_depths(broker, [queue.name])
    samples = scraped(registry)
    consumed = (('agent', 'Worker'), ('handler', 'Worker.work'), ('kind', 'consumer'), ('name', queue.name))

    def value(name: str, labels: tuple[tuple[str, str], ...] = consumed) -> float:
        return samples[(f'microagent_{name}', labels)]

    # 1 and 3 handled; 2 fails, is retried once, then dead-lettered; the invalid one is dead-lettered unhandled
    assert value('messages_received_total') == 5  # 1, 2 twice, 3, the invalid one
    assert value('messages_handled_total') == 2
    assert value('messages_failed_total') == 3
    assert value('messages_retried_total') == 1
    assert value('messages_dead_lettered_total') == 2
    assert value('handler_timeouts_total') == 0
    assert value('handler_duration_seconds_count') == 5
    assert value('time_in_queue_seconds_count') == 4  # the raw body says nothing of when it was sent
    assert value('handlers_in_flight') == 0
    assert value('messages_sent_total', (('kind', 'queue'), ('name', queue.name))) == 3
    assert value('messages_sent_total', (('kind', 'signal'), ('name', signal.name))) == 1
    assert value('queue_depth', (('queue', queue.name),)) == 0
    assert value('queue_in_flight', (('queue', queue.name),)) == 0
    heard = (('agent', 'Worker'), ('handler', 'Worker.heard'), ('kind', 'receiver'), ('name', signal.name))
    assert value('messages_handled_total', heard) == 1


async def _dead_letters(broker: AbstractQueueBroker, queue: Queue[Job], count: int) -> bool:
    return await broker[queue].dead_letter_count() == count


async def test_the_depth_gauge_counts_delayed_messages_and_in_flight_its_own(backend: Backend, unique: str) -> None:
    queue = Queue(f'metrics_depth_{unique}', Job)
    registry = CollectorRegistry()
    metrics = PrometheusMiddleware(registry)
    broker = backend.broker()
    await broker[queue].send_many([Job(job_id=1), Job(job_id=2)])
    await broker[queue].send(Job(job_id=3), delay=60)
    [taken] = await broker.transport.fetch(queue, 1, 5)
    await eventually(lambda: _depth_is(broker, queue, 2))  # 1 ready, 1 delayed (the taken one is not)
    await metrics.sample_depths(broker, [queue.name])
    samples = scraped(registry)
    assert samples[('microagent_queue_depth', (('queue', queue.name),))] == 2
    assert samples[('microagent_queue_in_flight', (('queue', queue.name),))] == 1
    await broker.transport.release(queue, [taken])


async def _depth_is(broker: AbstractQueueBroker, queue: Queue[Job], depth: int) -> bool:
    return (await broker[queue].depth()).depth == depth


async def test_grouped_handlings_are_counted_and_the_groups_lag_is_sampled(backend: Backend, unique: str) -> None:
    signal = Signal(f'metrics_group_{unique}', Job)
    registry = CollectorRegistry()
    metrics = PrometheusMiddleware(registry, depth_interval=0)  # only the sample at start
    release = asyncio.Event()

    class Billing(MicroAgent):
        @receiver(signal, group='billing')
        async def bill(self, job: Job) -> None:
            await release.wait()

    async with Billing(bus=backend.bus(), middlewares=[metrics]):
        pass  # the group exists from now on: what is sent while nobody reads it is its lag
    sender = backend.bus()
    for number in range(3):
        await sender[signal].send('tester', Job(job_id=number))
    agent = Billing(bus=backend.bus(), middlewares=[metrics])
    lag = (('group', 'billing'), ('signal', signal.name))
    metrics.watch_queues(agent)
    async with agent:
        await eventually(lambda: _scraped_is(registry, 'microagent_group_lag', lag, 3))
        release.set()
        handled = (('agent', 'Billing'), ('handler', 'Billing.bill'), ('kind', 'receiver'), ('name', signal.name))
        await eventually(lambda: _scraped_is(registry, 'microagent_messages_handled_total', handled, 3))


async def _scraped_is(registry: CollectorRegistry, name: str, labels: tuple[tuple[str, str], ...],
                      value: float) -> bool:
    return scraped(registry).get((name, labels)) == value
