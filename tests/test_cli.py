"""The ``microagent`` command: run (as marun), schema (delegated), dead-letters list/requeue."""
from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import microagent.schema
from microagent import MicroAgent, Queue, consumer
from microagent.broker import AbstractQueueBroker
from microagent.cli import main
from microagent.tools.memory import MemoryBroker
from tests.launcher_agents.support import Starter, starter
from tests.services import REDIS_HOST, REDIS_PORT, require_service

MEMORY = 'microagent.tools.memory.MemoryBroker'
REDIS_DSN = f'redis://{REDIS_HOST}:{REDIS_PORT}/5'


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    with starter(tmp_path) as run:
        yield run


# run

def test_run_is_marun(start: Starter) -> None:
    run = start('microagent', 'run', '--single-process', '--grace', '1', 'tests.launcher_agents.talk')
    run.wait_file('listener.pinged')
    run.signal(signal.SIGTERM)

    assert run.wait() == 0, run.output
    assert run.file('listener.stopped').exists()


def test_run_reports_a_bad_configuration(start: Starter) -> None:
    run = start('microagent', 'run', 'tests.launcher_agents.bad_bus')

    assert run.wait() == 2
    assert run.output.startswith("microagent run: error: tests.launcher_agents.bad_bus: AGENT['listener']: "
                                 "bus 'main' is not defined in BUS")


# schema

def test_schema_delegates_to_the_schema_module(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def schema_command(targets: list[str], asyncapi: bool, output: str | None) -> int:
        calls.append((targets, asyncapi, output))
        return 3

    monkeypatch.setattr(microagent.schema, 'schema_command', schema_command)

    assert main(['schema', 'app.users:UserAgent', 'app.mail:MailAgent', '--asyncapi', '-o', 'api.json']) == 3
    assert main(['schema', 'app.users:UserAgent']) == 3
    assert calls == [(['app.users:UserAgent', 'app.mail:MailAgent'], True, 'api.json'),
                     (['app.users:UserAgent'], False, None)]


# dead letters

async def _dead_letter(broker: AbstractQueueBroker, queue: Queue[Any], body: dict[str, Any]) -> None:
    """Let a real consumer fail on a message, so the broker dead-letters it the way it always does."""
    class Failing(MicroAgent):
        @consumer(queue, max_retries=0, timeout=5)
        async def handle(self, **kwargs: Any) -> None:
            raise ValueError(f'cannot handle {kwargs}')

    before = await broker.dead_letter_count(queue.name)
    async with Failing(broker=broker):
        await broker[queue].send(body)
        deadline = time.monotonic() + 10
        while await broker.dead_letter_count(queue.name) == before:  # no event crosses the broker API
            assert time.monotonic() < deadline, 'the message was not dead-lettered'
            await asyncio.sleep(0.01)


def test_dead_letters_list_and_requeue(unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    dsn, queue = f'memory://cli:secret@{unique}', Queue(f'cli_dead_{unique}')
    asyncio.run(_dead_letter(MemoryBroker(dsn), queue, {'n': 1}))
    asyncio.run(_dead_letter(MemoryBroker(dsn), queue, {'n': 2}))
    args = ['--broker', dsn, '--backend', MEMORY]

    assert main(['dead-letters', 'list', queue.name, *args]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"2 dead letters on queue '{queue.name}' (memory://cli:***@{unique}):"
    assert "attempts: 1  reason: ValueError: cannot handle {'n': 1}" in out
    assert '{"n":2}' in out and 'secret' not in out

    assert main(['dead-letters', 'list', queue.name, *args, '--limit', '1', '--json']) == 0
    [line] = capsys.readouterr().out.splitlines()
    letter = json.loads(line)
    assert (letter['queue'], letter['body'], letter['attempts']) == (queue.name, '{"n":1}', 1)
    assert letter['reason'] == "ValueError: cannot handle {'n': 1}"

    assert main(['dead-letters', 'requeue', queue.name, *args]) == 0
    assert capsys.readouterr().out.startswith(f"Requeued 2 dead letters on queue '{queue.name}'")
    assert asyncio.run(MemoryBroker(dsn).queue_length(queue.name)) == 2
    assert main(['dead-letters', 'list', queue.name, *args]) == 0
    assert capsys.readouterr().out.startswith('0 dead letters')


def test_dead_letters_with_a_bad_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['dead-letters', 'list', 'mailer', '--broker', 'memory://', '--backend', 'nowhere.Broker']) == 2
    assert "--backend: cannot import backend 'nowhere.Broker'" in capsys.readouterr().err
    assert main(['dead-letters', 'list', 'mailer', '--broker', 'memory://', '--backend',
                 'microagent.tools.memory.MemorySignalBus']) == 2
    assert 'is not a queue broker class' in capsys.readouterr().err


def test_dead_letters_when_the_broker_is_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip('redis')
    assert main(['dead-letters', 'list', 'mailer', '--broker', 'redis://:secret@127.0.0.1:1/0']) == 1
    err = capsys.readouterr().err
    assert err.startswith('microagent: error: broker redis://:***@127.0.0.1:1/0: ') and 'secret' not in err


@pytest.mark.redis
def test_dead_letters_on_redis(unique: str, start: Starter) -> None:
    require_service('Redis', REDIS_HOST, REDIS_PORT)
    from microagent.tools.redis import RedisBroker

    queue = Queue(f'cli_dead_{unique}')

    async def prepare() -> None:
        broker = RedisBroker(REDIS_DSN)
        try:
            await _dead_letter(broker, queue, {'n': 1})
        finally:
            await broker.close()

    async def length() -> int:
        broker = RedisBroker(REDIS_DSN)
        try:
            return await broker.queue_length(queue.name)
        finally:
            await broker.close()

    async def clean() -> None:
        broker = RedisBroker(REDIS_DSN)
        keys = [key async for key in broker.redis.scan_iter(match=f'{queue.name}*')]
        if keys:
            await broker.redis.delete(*keys)
        await broker.close()

    asyncio.run(prepare())
    try:
        listing = start('microagent', 'dead-letters', 'list', queue.name, '--broker', REDIS_DSN)  # default backend
        assert listing.wait() == 0, listing.output
        assert listing.output.startswith(f"1 dead letters on queue '{queue.name}'")
        assert "reason: ValueError: cannot handle {'n': 1}" in listing.output
        requeue = start('microagent', 'dead-letters', 'requeue', queue.name, '--broker', REDIS_DSN)
        assert requeue.wait() == 0, requeue.output
        assert requeue.output.startswith(f"Requeued 1 dead letters on queue '{queue.name}'")
        assert asyncio.run(length()) == 1
    finally:
        asyncio.run(clean())
