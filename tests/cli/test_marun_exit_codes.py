"""marun's exit codes when a server or a DSN fails an agent, with one process per agent and with
``--single-process``: an unreachable Redis is given up after the entry's ``connect_timeout``
(exit 3, naming the server), and a DSN only its backend refuses is one line naming the entry (exit 2),
never a traceback, and the password never shows."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from tests.launcher_agents.support import ROOT, starter

SECRET = 'S3cretRedisPassword'


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port: int = sock.getsockname()[1]
    return port


def settings(tmp_path: Path, name: str, bus: dict[str, object], broker: dict[str, object]) -> None:
    (tmp_path / f'{name}.py').write_text(f'''
BUS = {{'default': {bus!r}}}
BROKER = {{'default': {broker!r}}}
AGENT = {{'users': {{'backend': 'microagent.MicroAgent', 'bus': 'default', 'broker': 'default'}},
         'mailer': {{'backend': 'microagent.MicroAgent', 'broker': 'default'}}}}
''')


def run_marun(tmp_path: Path, module: str, *args: str) -> tuple[int, str, float]:
    """Run marun to its end (the test waits for the process to exit, nothing else)."""
    with starter(tmp_path) as start:
        started = time.monotonic()
        run = start('marun', module, *args,
                    env={'PYTHONPATH': os.pathsep.join([str(ROOT), str(tmp_path)])})
        code = run.wait()
        return code, run.output, time.monotonic() - started


@pytest.mark.parametrize('single', [False, True], ids=['processes', 'single-process'])
def test_marun_gives_up_on_an_unreachable_redis_and_exits_3_naming_it(tmp_path: Path, single: bool) -> None:
    port = closed_port()
    dsn = f'redis://:{SECRET}@127.0.0.1:{port}/0'
    entry = {'dsn': dsn, 'connect_timeout': 0.5}
    settings(tmp_path, 'unreachable_redis', entry, entry)

    code, output, took = run_marun(tmp_path, 'unreachable_redis', *(['--single-process'] if single else []))

    assert code == 3, output
    assert f'redis://:***@127.0.0.1:{port}/0' in output
    assert 'unreachable, gave up after 0.5s' in output
    assert 'Traceback' not in output and SECRET not in output
    assert took < 20


@pytest.mark.parametrize(('scheme', 'bound'), [('nats', 'connect_timeout'), ('amqp', 'reconnect_timeout')])
def test_marun_exits_3_on_an_unreachable_nats_or_rabbitmq_after_its_bound(tmp_path: Path, scheme: str,
                                                                           bound: str) -> None:
    """Even for agents that would connect only on their first send (nothing received or consumed)."""
    port = closed_port()
    entry = {'dsn': f'{scheme}://u:{SECRET}@127.0.0.1:{port}', bound: 0.5}
    settings(tmp_path, f'unreachable_{scheme}', entry, entry)

    code, output, took = run_marun(tmp_path, f'unreachable_{scheme}')

    assert code == 3, output
    assert f'{scheme}://u:***@127.0.0.1:{port}' in output
    assert 'Traceback' not in output and SECRET not in output
    assert took < 20


@pytest.mark.parametrize('single', [False, True], ids=['processes', 'single-process'])
def test_a_dsn_only_the_backend_refuses_is_one_line_and_exit_2(tmp_path: Path, single: bool) -> None:
    dsn = f'redis://:{SECRET}@127.0.0.1:6379/x'  # well-formed for marun's check; Redis has no db 'x'
    settings(tmp_path, 'refused_dsn', {'dsn': 'memory://'}, {'dsn': dsn})

    code, output, _ = run_marun(tmp_path, 'refused_dsn', *(['--single-process'] if single else []))

    assert code == 2, output
    assert "BROKER['default']: InvalidArgument: Redis DSN 'redis://:***@127.0.0.1:6379/x': the database" in output
    assert 'Traceback' not in output and SECRET not in output
