"""One trace across three marun processes and a real server: a periodic task (ticker) sends a
signal, a receiver in another process (relay) queues a message, a consumer in a third (worker)
handles it. Each process exports its spans to memory and writes them out when it exits; put back
together they are one trace with the right parent/child chain and attributes, on Redis and RabbitMQ."""
from __future__ import annotations

import asyncio
import itertools
import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.launcher_agents.support import Starter, starter
from tests.services import AMQP_HOST, AMQP_PORT, REDIS_HOST, REDIS_PORT, require_service

SETTINGS = 'tests.launcher_agents.traced'


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    with starter(tmp_path) as run:
        yield run


def read_spans(workdir: Path) -> dict[str, list[dict[str, Any]]]:
    """Each process's spans (by the pid in the file name), as the SDK writes them in JSON."""
    return {path.stem.removeprefix('spans-'): [json.loads(line) for line in path.read_text().splitlines()]
            for path in workdir.glob('spans-*.json')}


async def _clean_redis(unique: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url('redis://127.0.0.1:6379/9')
    try:
        keys = [key async for key in client.scan_iter(match=f'*{unique}*')]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def _clean_amqp(unique: str) -> None:
    import aiormq

    from tests.amqp_support import AMQP_DSN

    connection = await aiormq.connect(AMQP_DSN)
    try:
        channel = await connection.channel()
        queue = f'trace_shipping_{unique}'
        for name in (queue, f'{queue}.dead'):
            await channel.queue_delete(name)
        for name in (f'T{unique}', f'{queue}.dead'):
            await channel.exchange_delete(name)
    finally:
        await connection.close()


@pytest.mark.parametrize('backend', ['redis', 'amqp'])
def test_one_trace_spans_three_processes(start: Starter, backend: str) -> None:
    if backend == 'redis':
        require_service('Redis', REDIS_HOST, REDIS_PORT)
    else:
        require_service('RabbitMQ', AMQP_HOST, AMQP_PORT)
    unique = uuid.uuid4().hex[:12]
    try:
        run = start('marun', SETTINGS, env={'TRACE_TEST_BACKEND': backend, 'TRACE_TEST_ID': unique})
        handled_traceparent = run.wait_file('worker.handled')
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.output
    finally:
        asyncio.run(_clean_redis(unique) if backend == 'redis' else _clean_amqp(unique))
    by_process = read_spans(run.workdir)
    pids = {name: run.file(f'{name}.started').read_text() for name in ('ticker', 'relay', 'worker')}
    tick_name = 'periodic Ticker.tick'  # one per run: every 50 ms
    spans = {span['name']: span for found in by_process.values() for span in found if span['name'] != tick_name}
    ticks = [span for span in by_process[pids['ticker']] if span['name'] == tick_name]
    placed, shipping = f'trace_placed_{unique}', f'trace_shipping_{unique}'
    publish, heard = spans[f'publish {placed}'], spans[f'process {placed}']
    send, handled = spans[f'send {shipping}'], spans[f'process {shipping}']
    # each span in the process that did the work
    assert {span['name'] for span in by_process[pids['ticker']]} == {tick_name, f'publish {placed}'}
    assert {span['name'] for span in by_process[pids['relay']]} == {f'process {placed}', f'send {shipping}'}
    assert {span['name'] for span in by_process[pids['worker']]} == {f'process {shipping}'}
    # one trace, and the chain: tick -> publish -> process (relay) -> send -> process (worker)
    tick = next(span for span in ticks if span['context']['span_id'] == publish['parent_id'])
    assert tick['parent_id'] is None and tick['kind'] == 'SpanKind.INTERNAL'
    chain = [tick, publish, heard, send, handled]
    assert len({span['context']['trace_id'] for span in chain}) == 1
    for parent, child in itertools.pairwise(chain):
        assert child['parent_id'] == parent['context']['span_id'], (parent['name'], child['name'])
    assert [span['kind'] for span in chain[1:]] == ['SpanKind.PRODUCER', 'SpanKind.CONSUMER',
                                                    'SpanKind.PRODUCER', 'SpanKind.CONSUMER']
    trace_id, span_id = handled_traceparent.split('-')[1:3]  # what the worker's message carried
    assert (f'0x{trace_id}', f'0x{span_id}') == (send['context']['trace_id'], send['context']['span_id'])
    system = {'redis': 'redis', 'amqp': 'rabbitmq'}[backend]
    for span in chain[1:]:
        assert span['attributes']['messaging.system'] == system
    assert publish['attributes']['messaging.destination.name'] == placed
    assert heard['attributes']['microagent.handler'] == 'Relay.ship'
    assert send['attributes']['messaging.destination.name'] == shipping
    assert handled['attributes']['messaging.operation.type'] == 'process'
    assert handled['attributes']['messaging.message.id'] == send['attributes']['messaging.message.id']
    assert handled['attributes']['messaging.message.conversation_id'] == \
        publish['attributes']['messaging.message.conversation_id']  # one conversation too
    assert handled['attributes']['microagent.outcome'] == 'ok'
