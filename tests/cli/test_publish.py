"""``microagent publish``: a validated message sent by hand over a real server, and received by an
agent of the test; RPC answered; a bad payload, option or server told apart by the exit code."""
from __future__ import annotations

import asyncio
import importlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from microagent import Message, MicroAgent, consumer, receiver
from microagent.cli.main import main
from microagent.loader import load_stuff
from tests.conformance.backends import BACKENDS, REDIS_TEST_DSN, Backend
from tests.launcher_agents.support import ROOT, command
from tests.services import NATS_DSN

MODULE = 'tests.publish_declarations'


def _dsn(backend: Backend) -> str:
    if backend.name == 'redis':
        return REDIS_TEST_DSN
    if backend.name == 'amqp':
        from tests.amqp_support import AMQP_DSN

        return AMQP_DSN
    return NATS_DSN


@pytest.fixture(params=['redis', 'amqp', 'nats'])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with BACKENDS[request.param]() as opened:
        yield opened


@pytest.fixture
def declarations(tmp_path: Path, unique: str) -> str:
    """A declarations document of this test's own names, declared here as the command will."""
    job = {'type': 'object', 'properties': {'job_id': {'type': 'integer'}}, 'required': ['job_id']}
    document = {
        'signals': [{'name': f'pub_event_{unique}', 'providing_args': {'user_id': 'integer'}},
                    {'name': f'pub_count_{unique}', 'providing_args': {'user_id': 'integer'}}],
        'queues': [{'name': f'pub_jobs_{unique}', 'schema': job},
                   {'name': f'pub_push_{unique}', 'exchange': f'pub_ex_{unique}', 'topics': ['*.push']}],
    }
    path = tmp_path / 'declarations.json'
    path.write_text(json.dumps(document))
    load_stuff(f'file://{path}')
    return f'file://{path}'


async def publish(*args: str, path: Path | None = None) -> tuple[int, str, str]:
    """The command as a user runs it, in a process of its own, while the test's agents run; ``path``
    is where it finds a settings module the test wrote."""
    env = dict(os.environ)
    if path is not None:
        env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(path), env.get('PYTHONPATH', '')]))
    process = await asyncio.create_subprocess_exec(*command('microagent'), 'publish', *args, cwd=ROOT, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_queue_message_is_validated_sent_and_consumed(server: Backend, declarations: str,
                                                              unique: str) -> None:
    from microagent import Queue

    jobs = Queue.get(f'pub_jobs_{unique}')
    got: asyncio.Queue[tuple[dict[str, Any], Message]] = asyncio.Queue()

    class Worker(MicroAgent):
        @consumer(jobs)
        async def work(self, message: Message, **fields: Any) -> None:
            got.put_nowait(({k: v for k, v in fields.items() if k != 'amqp'}, message))

    async with Worker(broker=server.broker()):
        code, out, err = await publish(jobs.name, '{"job_id": 42}', '--broker', _dsn(server), '--module', declarations,
                                       '--header', 'tenant=acme')
        assert (code, err) == (0, '')
        fields, message = await asyncio.wait_for(got.get(), 10)
    assert fields == {'job_id': 42} and message.headers == {'tenant': 'acme'}
    assert out == f"Sent queue {jobs.name!r} to {_dsn(server).replace('guest:guest', 'guest:***')} " \
                  f'(message id {message.message_id})\n'


async def test_a_signal_is_received_and_a_call_answered(server: Backend, declarations: str, unique: str) -> None:
    from microagent import Signal

    event, count = Signal.get(f'pub_event_{unique}'), Signal.get(f'pub_count_{unique}')
    got: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    class Listener(MicroAgent):
        @receiver(event)
        async def on_event(self, sender: str, user_id: int, **rest: Any) -> None:
            got.put_nowait((sender, user_id))

        @receiver(count)
        async def counted(self, user_id: int, **rest: Any) -> int:
            return user_id * 10

    bus = server.bus()
    prefix = bus.transport.prefix  # type: ignore[attr-defined]  # each backend's bus has one
    async with Listener(bus=bus):
        where = ('--bus', _dsn(server), '--prefix', prefix, '--module', declarations)
        code, out, err = await publish(event.name, '{"user_id": 7}', *where, '--sender', 'ops')
        assert (code, err) == (0, '') and out.startswith(f'Sent signal {event.name!r} to ')
        assert await asyncio.wait_for(got.get(), 10) == ('ops', 7)

        code, out, err = await publish(count.name, '{"user_id": 4}', *where, '--call', '--timeout', '10')
    assert code == 0, err
    assert list(json.loads(out).values()) == [40] and next(iter(json.loads(out))).endswith('Listener.counted')
    assert err.startswith(f'Sent signal {count.name!r} to ')  # stdout holds the answers alone


@pytest.mark.redis
async def test_an_exchange_publish_reaches_its_bound_queue(declarations: str, unique: str) -> None:
    from microagent import Queue

    push = Queue.get(f'pub_push_{unique}')
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    class Pusher(MicroAgent):
        @consumer(push)
        async def deliver(self, **fields: Any) -> None:
            got.put_nowait(fields)

    async with BACKENDS['redis']() as backend, Pusher(broker=backend.broker()):
        code, out, err = await publish(f'pub_ex_{unique}', '{"text": "hi"}', '--broker', REDIS_TEST_DSN,
                                       '--exchange', '--topic', 'ios.push', '--module', declarations)
        assert code == 0, err
        assert await asyncio.wait_for(got.get(), 10) == {'text': 'hi'}
    assert "with routing key 'ios.push': 1 queue(s)" in out


@pytest.mark.redis
async def test_a_call_nobody_answers_is_exit_1(declarations: str, unique: str) -> None:
    code, out, err = await publish(f'pub_count_{unique}', '{"user_id": 1}', '--bus', REDIS_TEST_DSN,
                                   '--prefix', f'nobody_{unique}', '--module', declarations, '--call',
                                   '--timeout', '0.3')
    assert (code, out) == (1, '')
    assert err == (f"microagent publish: error: no answer to signal 'pub_count_{unique}' within 0.3s: asked on "
                   f"{REDIS_TEST_DSN} with prefix 'nobody_{unique}' (--prefix); only receivers on that server and "
                   'prefix hear it: check --prefix, or give --module their settings module\n')


SETTINGS = '''
import msgspec
from microagent import MicroAgent, Queue, Signal, receiver

class Query(msgspec.Struct):
    user_id: int

count = Signal('set_count_{unique}', Query, returns=int)
jobs = Queue('set_jobs_{unique}', Query)

class Counter(MicroAgent):
    @receiver(count)
    async def counted(self, query: Query) -> int:
        return query.user_id * 10

class Other(MicroAgent):
    @receiver(count)
    async def counted(self, query: Query) -> int:
        return 0

BUS = {buses}
BROKER = {{'jobs': {{'dsn': 'redis://:secret@127.0.0.1:1/0'}}}}
AGENT = {agents}
'''


def settings(path: Path, unique: str, buses: dict[str, dict[str, str]]) -> str:
    """A marun settings module in ``path``: a Counter agent per BUS entry (the first one answers)."""
    name = f'pub_settings_{unique}'
    agents = {f'a{i}': {'backend': f'{name}.{"Counter" if i == 0 else "Other"}', 'bus': bus, 'broker': 'jobs'}
              for i, bus in enumerate(buses)}
    (path / f'{name}.py').write_text(SETTINGS.format(unique=unique, buses=buses, agents=agents))
    return name


@pytest.mark.redis
async def test_a_settings_module_gives_the_dsn_and_prefix_of_its_bus(tmp_path: Path, unique: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from microagent.cli.config import load_module

    name = settings(tmp_path, unique, {'main': {'dsn': REDIS_TEST_DSN, 'prefix': f'pfx_{unique}'}})
    monkeypatch.syspath_prepend(str(tmp_path))
    [counter] = load_module(name)
    async with counter.build():  # as marun runs it: on the settings' DSN and prefix
        code, out, err = await publish(f'set_count_{unique}', '{"user_id": 4}', '--module', name, '--call',
                                       '--timeout', '10', path=tmp_path)
        assert code == 0, err
        assert list(json.loads(out).values()) == [40]
        # a DSN given: the prefix is still the settings' one
        code, out, err = await publish(f'set_count_{unique}', '{"user_id": 5}', '--module', name, '--call',
                                       '--bus', REDIS_TEST_DSN, path=tmp_path)
        assert code == 0, err
        assert list(json.loads(out).values()) == [50]
        # unless --prefix says otherwise
        code, out, err = await publish(f'set_count_{unique}', '{"user_id": 5}', '--module', name, '--call',
                                       '--bus', REDIS_TEST_DSN, '--prefix', 'elsewhere', '--timeout', '0.3',
                                       path=tmp_path)
    assert (code, out) == (1, '')
    assert f"asked on {REDIS_TEST_DSN} with prefix 'elsewhere' (--prefix)" in err


@pytest.mark.amqp
async def test_no_answer_names_the_settings_entry_prefix_and_dsn_without_its_password(tmp_path: Path,
                                                                                       unique: str) -> None:
    from tests.amqp_support import AMQP_DSN

    name = settings(tmp_path, unique, {'main': {'dsn': AMQP_DSN, 'prefix': f'pfx_{unique}'}})
    code, out, err = await publish(f'set_count_{unique}', '{"user_id": 4}', '--module', name, '--call',
                                   '--timeout', '0.3', path=tmp_path)
    assert (code, out) == (1, '')
    assert f"asked on {AMQP_DSN.replace('guest:guest', 'guest:***')} with prefix 'pfx_{unique}' " \
           f"({name}: BUS['main'])" in err
    assert 'guest:guest' not in err


def test_settings_with_several_buses_ask_which(tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    name = settings(tmp_path, unique, {'one': {'dsn': 'redis://127.0.0.1:1/0', 'prefix': 'A'},
                                       'two': {'dsn': 'redis://:secret@127.0.0.1:2/0', 'prefix': 'B'}})
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    args = ['publish', f'set_count_{unique}', '{"user_id": 1}', '--module', name, '--timeout', '0.5']
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"use 2 different BUS entries ({name}: BUS['one'] redis://127.0.0.1:1/0, {name}: BUS['two'] " \
           "redis://:***@127.0.0.1:2/0): give --bus with the name of one, or a DSN" in err
    assert main([*args, '--bus', 'two']) == 3  # the entry named: its DSN
    assert '127.0.0.1:2' in capsys.readouterr().err
    assert main([*args, '--bus', 'three']) == 2
    assert "--bus 'three': neither a DSN nor a BUS entry" in capsys.readouterr().err
    assert main([*args, '--bus', 'redis://127.0.0.1:3/0']) == 2  # a DSN, but which prefix?
    err = capsys.readouterr().err
    assert f"different prefixes ({name}: BUS['one'] 'A', {name}: BUS['two'] 'B'): give --prefix" in err


def test_a_queue_goes_to_the_settings_broker(tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    name = settings(tmp_path, unique, {'one': {'dsn': 'redis://127.0.0.1:1/0'}})
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    # no --broker: NAME is a queue, and the agents' BROKER entry says where it goes
    assert main(['publish', f'set_jobs_{unique}', '{"user_id": 1}', '--module', name, '--timeout', '0.5']) == 3
    err = capsys.readouterr().err
    assert 'redis://:***@127.0.0.1:1/0' in err and 'secret' not in err


# what is refused before anything is sent (in this process: no server needed)

@pytest.mark.parametrize(('payload', 'expected'), [
    ('{"order_id": "x"}', "Invalid payload for queue 'publish_orders': Expected `int`, got `str` - at `$.order_id`"),
    ('{"note": "no id"}', 'missing required field `order_id`'),
    ('{"order_id": 1', 'PAYLOAD is not JSON'),
])
def test_a_bad_payload_is_exit_2_naming_the_field(payload: str, expected: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['publish', 'publish_orders', payload, '--broker', 'redis://127.0.0.1:1/0', '--module', MODULE]) == 2
    out, err = capsys.readouterr()
    assert out == '' and err.startswith('microagent publish: error: ') and expected in err


@pytest.mark.parametrize(('args', 'expected'), [
    (['publish_order_placed', '{"order_id": 1}', '--bus', 'memory://'], 'memory:// lives in one process'),
    (['publish_orders', '{"order_id": 1}', '--broker', 'redis://h', '--call'], '--call is RPC over a signal bus'),
    (['publish_order_placed', '{"order_id": 1}', '--bus', 'redis://h', '--delay', '1'], 'go with --broker'),
    (['publish_orders', '{"order_id": 1}', '--broker', 'redis://h', '--header', 'message-id=1'], "'message-id'"),
    (['publish_orders', '{"order_id": 1}', '--broker', 'redis://h', '--header', 'novalue'], 'give NAME=VALUE'),
    (['publish_orders', '{"order_id": 1}', '--broker', 'kafka://h'], 'no backend for the scheme'),
    (['nowhere', '{}', '--broker', 'redis://h'], "queue 'nowhere' is not declared in tests.publish_declarations"),
    (['publish_orders', '{}', '--bus', 'redis://h'], "signal 'publish_orders' is not declared"),
    (['publish_orders', '{"order_id": 1}'], 'give --broker DSN, or --module a settings module whose agents use a '
                                            'BROKER entry'),
    (['publish_orders', '{"order_id": 1}', '--broker'], 'give --broker DSN'),
])
def test_usage_errors_are_exit_2(args: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['publish', *args, '--module', MODULE]) == 2
    assert expected in capsys.readouterr().err


def test_a_module_that_cannot_be_imported_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['publish', 'publish_orders', '{}', '--broker', 'redis://h', '--module', 'tests.nowhere']) == 2
    assert "'tests.nowhere': cannot import it" in capsys.readouterr().err


@pytest.mark.parametrize('dsn', ['redis://:secret@127.0.0.1:1/0', 'amqp://guest:secret@127.0.0.1:1/',
                                 'nats://127.0.0.1:1'])
@pytest.mark.parametrize('role', ['--bus', '--broker'])
def test_an_unreachable_server_is_exit_3(dsn: str, role: str, capsys: pytest.CaptureFixture[str]) -> None:
    name = 'publish_order_placed' if role == '--bus' else 'publish_orders'
    assert main(['publish', name, '{"order_id": 1}', role, dsn, '--module', MODULE, '--timeout', '0.5']) == 3
    err = capsys.readouterr().err
    assert err.startswith('microagent publish: error: ') and 'secret' not in err and '127.0.0.1:1' in err


@pytest.mark.redis
async def test_a_signed_fleet_is_sent_to_with_the_key_of_its_settings(tmp_path: Path, unique: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With a settings module, publish signs with its SIGNING_KEY (or the entry's ``signing_key``),
    whether the DSN comes from the settings or from --bus: the fleet's agents refuse unsigned messages."""
    from microagent.cli.config import load_module

    name = settings(tmp_path, unique, {'main': {'dsn': REDIS_TEST_DSN, 'prefix': f'sig_{unique}'}})
    with (tmp_path / f'{name}.py').open('a') as file:
        file.write("SIGNING_KEY = ['publish-test-key-0123456789']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    [counter] = load_module(name)
    async with counter.build():  # its bus checks signatures
        code, out, err = await publish(f'set_count_{unique}', '{"user_id": 4}', '--module', name, '--call',
                                       '--timeout', '10', path=tmp_path)
        assert code == 0, err
        assert list(json.loads(out).values()) == [40]
        code, out, err = await publish(f'set_count_{unique}', '{"user_id": 5}', '--module', name, '--call',
                                       '--bus', REDIS_TEST_DSN, '--timeout', '10', path=tmp_path)
        assert code == 0, err
        assert list(json.loads(out).values()) == [50]
        assert 'publish-test-key' not in out + err
