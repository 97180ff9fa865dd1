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

import microagent.cli.schema
from microagent import MicroAgent, Queue, consumer
from microagent.backends.memory import MemoryBroker
from microagent.broker import AbstractQueueBroker
from microagent.cli.main import main
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

def test_schema_delegates_to_the_schema_module(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[Any, ...]] = []

    def schema_command(targets: list[str], asyncapi: bool, output: str | None, *, title: str | None = None,
                       version: str = '1.0.0') -> int:
        calls.append((targets, asyncapi, output, title, version))
        return 3

    monkeypatch.setattr(microagent.cli.schema, 'schema_command', schema_command)

    assert main(['schema', 'app.users:UserAgent', 'app.mail:MailAgent', '--asyncapi', '-o', 'api.json']) == 3
    assert main(['schema', 'app.users:UserAgent']) == 3
    assert main(['schema', 'app.users:UserAgent', '--asyncapi', '--title', 'Users', '--version', '2.1.0']) == 3
    assert calls == [(['app.users:UserAgent', 'app.mail:MailAgent'], True, 'api.json', None, '1.0.0'),
                     (['app.users:UserAgent'], False, None, None, '1.0.0'),
                     (['app.users:UserAgent'], True, None, 'Users', '2.1.0')]
    # a title without --asyncapi would be silently dropped: refused instead
    assert main(['schema', 'app.users:UserAgent', '--version', '2.1.0']) == 2
    assert 'add --asyncapi' in capsys.readouterr().err and len(calls) == 3


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
    assert "#0  " in out and "attempts: 1  reason: ValueError: cannot handle {'n': 1}" in out
    assert '{"n":2}' in out and 'secret' not in out

    assert main(['dead-letters', 'list', queue.name, *args, '--limit', '1', '--json']) == 0
    [line] = capsys.readouterr().out.splitlines()
    letter = json.loads(line)
    assert (letter['queue'], letter['body'], letter['attempts']) == (queue.name, '{"n":1}', 1)
    assert letter['reason'] == "ValueError: cannot handle {'n': 1}"

    assert main(['dead-letters', 'requeue', queue.name, *args]) == 0
    assert capsys.readouterr().out.startswith(f"Requeued 2 dead letters on queue '{queue.name}'")
    assert asyncio.run(MemoryBroker(dsn).queue_length(queue.name)) == 2
    assert main(['dead-letters', 'list', queue.name, *args]) == 1  # no dead letter: a script can tell
    assert capsys.readouterr().out.startswith('0 dead letters')


def test_dead_letters_with_a_bad_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['dead-letters', 'list', 'mailer', '--broker', 'memory://', '--backend', 'nowhere.Broker']) == 2
    assert "--backend: cannot import backend 'nowhere.Broker'" in capsys.readouterr().err
    assert main(['dead-letters', 'list', 'mailer', '--broker', 'memory://', '--backend',
                 'microagent.tools.memory.MemorySignalBus']) == 2
    assert 'is not a queue broker class' in capsys.readouterr().err


def test_dead_letters_when_the_broker_is_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip('redis')
    assert main(['dead-letters', 'list', 'mailer', '--broker', 'redis://:secret@127.0.0.1:1/0']) == 3
    err = capsys.readouterr().err
    assert err.startswith('microagent: error: broker redis://:***@127.0.0.1:1/0: ') and 'secret' not in err


@pytest.mark.redis
def test_dead_letters_on_redis(unique: str, start: Starter) -> None:
    require_service('Redis', REDIS_HOST, REDIS_PORT)
    from microagent.backends.redis import RedisBroker

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
        show = start('microagent', 'dead-letters', 'show', queue.name, '0', '--broker', REDIS_DSN)
        assert show.wait() == 0, show.output
        assert "reason:   ValueError: cannot handle {'n': 1}\n" in show.output
        assert show.output.endswith('body:\n{"n":1}\n')
        dry = start('microagent', 'dead-letters', 'purge', queue.name, '--all', '--dry-run', '--broker', REDIS_DSN)
        assert dry.wait() == 0, dry.output
        requeue = start('microagent', 'dead-letters', 'requeue', queue.name, '--reason', 'ValueError',
                        '--broker', REDIS_DSN)
        assert requeue.wait() == 0, requeue.output
        assert requeue.output.startswith(f"Requeued 1 dead letters on queue '{queue.name}'")
        assert asyncio.run(length()) == 1
        purge = start('microagent', 'dead-letters', 'purge', queue.name, '--all', '--broker', REDIS_DSN)
        assert purge.wait() == 1, purge.output  # nothing left to purge
        unknown = start('microagent', 'dead-letters', 'list', f'typo_{unique}', '--broker', REDIS_DSN)
        assert unknown.wait() == 2, unknown.output
    finally:
        asyncio.run(clean())


def _memory(unique: str, *ids: int) -> tuple[str, Queue[Any]]:
    """A memory DSN whose queue has one dead letter per id, in order ('odd' or 'even' in the reason)."""
    dsn, queue = f'memory://{unique}', Queue(f'cli_pick_{unique}')
    for n in ids:
        asyncio.run(_dead_letter(MemoryBroker(dsn), queue, {'n': n, 'kind': 'odd' if n % 2 else 'even'}))
    return dsn, queue


def _bodies(dsn: str, queue: Queue[Any]) -> list[Any]:
    return [json.loads(letter.body)['n'] for letter in asyncio.run(MemoryBroker(dsn).dead_letters(queue.name))]


def test_dead_letters_show_one_letter_in_full(unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    dsn, queue = _memory(unique, 1, 2)

    assert main(['dead-letters', 'show', queue.name, '1', '--broker', dsn]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Dead letter #1 on queue '{queue.name}' (memory://{unique})\ntime:     ")
    assert 'attempts: 1\n' in out and "reason:   ValueError: cannot handle {'n': 2, 'kind': 'even'}\n" in out
    assert '  message-id: ' in out  # every header, one a line
    assert out.endswith('body:\n{"n":2,"kind":"even"}\n')

    assert main(['dead-letters', 'show', queue.name, '0', '--broker', dsn, '--json']) == 0
    letter = json.loads(capsys.readouterr().out)
    assert (letter['position'], letter['body'], letter['attempts']) == (0, '{"n":1,"kind":"odd"}', 1)
    assert 'message-id' in letter['headers']

    assert main(['dead-letters', 'show', queue.name, '2', '--broker', dsn]) == 1
    assert capsys.readouterr().err == f"microagent: no dead letter #2 on queue '{queue.name}' " \
                                      f'(memory://{unique}): it has 2\n'


def test_dead_letters_filter_by_reason(unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    dsn, queue = _memory(unique, 1, 2, 3)

    assert main(['dead-letters', 'list', queue.name, '--broker', dsn, '--reason', "'odd'"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"2 of 3 dead letters on queue '{queue.name}' (memory://{unique}) match:")
    assert [line.split()[0] for line in out.splitlines()[1::2]] == ['#0', '#2']

    assert main(['dead-letters', 'list', queue.name, '--broker', dsn, '--reason-re', r"'n': [23],"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1::2]] == ['#1', '#2']

    assert main(['dead-letters', 'list', queue.name, '--broker', dsn, '--reason', 'timeout']) == 1
    assert capsys.readouterr().out.startswith('0 of 3 dead letters')

    assert main(['dead-letters', 'list', queue.name, '--broker', dsn, '--reason-re', '(']) == 2
    assert "--reason-re: '(' is not a regular expression" in capsys.readouterr().err


def test_dead_letters_requeue_one_and_dry_run(unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    dsn, queue = _memory(unique, 1, 2, 3)

    assert main(['dead-letters', 'requeue', queue.name, '1', '--broker', dsn, '--dry-run']) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Would requeue 1 dead letters on queue '{queue.name}' (memory://{unique}):\n#1  ")
    assert _bodies(dsn, queue) == [1, 2, 3]  # nothing changed

    assert main(['dead-letters', 'requeue', queue.name, '1', '--broker', dsn]) == 0
    assert capsys.readouterr().out == f"Requeued 1 dead letters on queue '{queue.name}' (memory://{unique})\n"
    assert _bodies(dsn, queue) == [1, 3]
    assert asyncio.run(MemoryBroker(dsn).queue_length(queue.name)) == 1

    assert main(['dead-letters', 'requeue', queue.name, '7', '--broker', dsn]) == 1  # no such position
    assert capsys.readouterr().out.startswith('Requeued 0 dead letters')


def test_dead_letters_purge(unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    dsn, queue = _memory(unique, 1, 2, 3)

    assert main(['dead-letters', 'purge', queue.name, '--broker', dsn]) == 2  # everything only with --all
    assert 'purge: name the POSITIONs, a --reason or --reason-re, or --all' in capsys.readouterr().err

    assert main(['dead-letters', 'purge', queue.name, '--broker', dsn, '--reason', 'odd', '--dry-run']) == 0
    assert capsys.readouterr().out.startswith('Would purge 2 dead letters')
    assert _bodies(dsn, queue) == [1, 2, 3]

    assert main(['dead-letters', 'purge', queue.name, '--broker', dsn, '--reason', 'odd']) == 0
    assert capsys.readouterr().out.startswith('Purged 2 dead letters')
    assert _bodies(dsn, queue) == [2]
    assert asyncio.run(MemoryBroker(dsn).queue_length(queue.name)) == 0  # gone, not requeued

    assert main(['dead-letters', 'purge', queue.name, '--broker', dsn, '--all']) == 0
    assert main(['dead-letters', 'purge', queue.name, '--broker', dsn, '--all']) == 1
    assert _bodies(dsn, queue) == []


def test_an_unknown_queue_is_an_error(unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = f'memory://{unique}'
    for action in ('list', 'requeue'):
        assert main(['dead-letters', action, f'typo_{unique}', '--broker', dsn]) == 2
        assert capsys.readouterr().err == (f"microagent: error: queue 'typo_{unique}' is not declared on "
                                           f'memory://{unique} and has no messages or dead letters\n')


def test_the_dsn_scheme_picks_the_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['dead-letters', 'list', 'q', '--broker', 'kafka://user:secret@host:9092']) == 2
    err = capsys.readouterr().err
    assert "--broker: no backend for the scheme of 'kafka://user:***@host:9092': use one of redis://, " \
           'rediss://, unix://, redis+cluster://, rediss+cluster://, amqp://, amqps://, nats://, memory://, ' \
           'or --backend' in err


def test_an_unreachable_amqp_broker_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip('aiormq')
    assert main(['dead-letters', 'list', 'mailer', '--broker', 'amqp://guest:secret@127.0.0.1:1/',
                 '--timeout', '0.5']) == 3
    err = capsys.readouterr().err
    assert err.startswith('microagent: error: broker amqp://guest:***@127.0.0.1:1/: ') and 'secret' not in err


@pytest.mark.amqp
def test_dead_letters_on_rabbitmq(unique: str, start: Starter) -> None:
    """The issue's case: an amqp:// DSN is served by the AMQP backend, not the Redis client."""
    from microagent.backends.amqp import AMQPBroker
    from tests.amqp_support import AMQP_DSN, delete_declared, require_rabbitmq

    require_rabbitmq()
    queue = Queue(f'cli_dead_{unique}')
    broker = AMQPBroker(AMQP_DSN)

    async def prepare() -> None:
        try:
            await _dead_letter(broker, queue, {'n': 1})
            await _dead_letter(broker, queue, {'n': 2})
        finally:
            await broker.close()  # its record of what it declared is what the cleanup deletes

    async def state() -> tuple[int, int]:
        checker = AMQPBroker(AMQP_DSN)
        try:
            return await checker.queue_length(queue.name), await checker.dead_letter_count(queue.name)
        finally:
            await checker.close()

    asyncio.run(prepare())
    try:
        listing = start('microagent', 'dead-letters', 'list', queue.name, '--broker', AMQP_DSN)
        assert listing.wait() == 0, listing.output
        assert listing.output.startswith(f"2 dead letters on queue '{queue.name}'")
        show = start('microagent', 'dead-letters', 'show', queue.name, '1', '--broker', AMQP_DSN)
        assert show.wait() == 0, show.output
        assert show.output.endswith('body:\n{"n":2}\n')
        requeue = start('microagent', 'dead-letters', 'requeue', queue.name, '0', '--broker', AMQP_DSN)
        assert requeue.wait() == 0, requeue.output
        purge = start('microagent', 'dead-letters', 'purge', queue.name, '--all', '--broker', AMQP_DSN)
        assert purge.wait() == 0, purge.output
        assert asyncio.run(state()) == (1, 0)
        unknown = start('microagent', 'dead-letters', 'list', f'typo_{unique}', '--broker', AMQP_DSN)
        assert unknown.wait() == 2, unknown.output
    finally:
        asyncio.run(delete_declared([broker]))
