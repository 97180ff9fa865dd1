"""The README's demo runs to completion, on the memory backend and on Redis, and shows each feature."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher_agents.support import Starter, starter

# What a newcomer should see, in the demo's words: sent, received, answered, queued, retried, consumed.
EVENTS = [
    'users[{users}]: SENT signal user_created: user 1 Ada <ada1@example.com>',
    'mailer[{mailer}]: RECEIVED user_created: user ',
    'comments[{comments}]: ANSWERED comments_count for user ',
    'users[{users}]: GOT answer to comments_count for user ',
    'mailer[{mailer}]: QUEUED a welcome mail to ',
    'mailer[{mailer}]: PUBLISHED a push to the push exchange with routing key ',
    'mailer[{mailer}]: FAILED to send mail to ',
    'mailer[{mailer}] agent.mailer.broker: Queue mailer: MailerAgent.send_mail failed on attempt 1',
    ' on the retry\n',
    'push[{push}]: PUSHED to ',
    'mailer[{mailer}]: SUMMARY: mailed ',
]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    with starter(tmp_path) as run:
        yield run


def _untagged(output: str) -> str:
    """The output without the conversation tags (`` #1a2b3c4d``) of the text log format."""
    return re.sub(r' #[0-9a-f]{8}:', ':', output)


def _pids(output: str) -> dict[str, str]:
    """The pid each agent logged its start under."""
    pids = {}
    for line in output.splitlines():
        if ']: Started ' in line:  # the agent's own line, not the supervisor's
            agent, _, rest = line.split()[3].partition('[')
            pids[agent] = rest.split(']')[0]
    return pids


def test_the_demo_on_the_memory_backend(start: Starter) -> None:
    demo = start('python', '--duration', '5.5', module='examples')  # 5.5 s always holds a 5 s cron tick

    assert demo.wait() == 0, demo.output
    output, tagged = _untagged(demo.output), demo.output
    pids = _pids(output)
    assert set(pids) == {'users', 'comments', 'mailer', 'push'} and len(set(pids.values())) == 1
    for event in EVENTS:
        assert event.format(**pids) in output, event
    assert f'users[{pids["users"]}]: CRON report: ' in output
    assert output.count('failed on attempt') == 1  # one retry, then success
    assert 'PUSHED to android, user 1: Hi Ada!' in output and 'PUSHED to iOS, user 2: Hi Grace!' in output
    assert 'Ran for 5.5s: stopping the group' in output
    assert 'ERROR' not in output and 'Traceback' not in output
    # two replicas of billing share user_created in a group: each user billed once in all
    assert re.search(r'SUMMARY: the billing group billed [45] users with 2 replicas \(\d \+ \d\): each once in all',
                     output), output
    # one conversation, one tag on each of its lines: sent, received, answered, queued, retried, pushed
    tag = re.search(r'#([0-9a-f]{8}): SENT signal user_created: user 1 ', tagged)
    assert tag is not None, tagged
    for event in ('RECEIVED user_created: user 1 ', 'ANSWERED comments_count for user 1 ', 'QUEUED a welcome',
                  'Queue mailer: MailerAgent.send_mail failed on attempt 1', 'PUSHED to android, user 1:'):
        assert f'#{tag[1]}: {event}' in tagged, event


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own: the demo's fixed names (queue ``mailer``, pub/sub prefix
    ``DEMO``, global to a server) would cross-talk with a demo other test runs start on the shared one."""
    if shutil.which('redis-server') is None:
        message = 'Redis: redis-server is not installed, the demo needs a private server'
        if os.environ.get('MICROAGENT_REQUIRE_SERVICES'):
            pytest.fail(message)
        pytest.skip(message)
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(['redis-server', '--port', str(port), '--bind', '127.0.0.1', '--save', '',
                               '--appendonly', 'no', '--dir', str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _answers(port):  # another process: nothing to await
            assert server.poll() is None and time.monotonic() < deadline, 'the private redis-server did not start'
            time.sleep(0.05)
        yield f'redis://127.0.0.1:{port}/5'
    finally:
        server.terminate()
        server.wait()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=1):
            return True
    except OSError:
        return False


def test_the_demo_on_redis(start: Starter, private_redis: str) -> None:
    _demo_on_servers(start, '--redis', private_redis)


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[str]:
    """A nats-server of this test's own, for the same reason as ``private_redis``."""
    from tests.nats_support import NATS_SERVER

    if not os.access(NATS_SERVER, os.X_OK):
        message = 'NATS: nats-server is not installed, the demo needs a private server'
        if os.environ.get('MICROAGENT_REQUIRE_SERVICES'):
            pytest.fail(message)
        pytest.skip(message)
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([NATS_SERVER, '-a', '127.0.0.1', '-p', str(port), '-js', '-sd', str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _answers(port):
            assert server.poll() is None and time.monotonic() < deadline, 'the private nats-server did not start'
            time.sleep(0.05)
        yield f'nats://127.0.0.1:{port}'
    finally:
        server.terminate()
        server.wait()


def test_the_demo_on_nats(start: Starter, private_nats: str) -> None:
    _demo_on_servers(start, '--nats', private_nats)


def _demo_on_servers(start: Starter, flag: str, dsn: str) -> None:
    """The demo with one process per agent, stopped once every event is shown (a loaded machine
    starts four processes slowly), not after a fixed time."""
    demo = start('python', flag, dsn, '--duration', '60', module='examples')
    demo.wait_for('every agent to start', lambda: len(_pids(demo.output)) == 4)
    pids = _pids(demo.output)
    events = [event.format(**pids) for event in EVENTS if 'SUMMARY' not in event]
    demo.wait_for('every event of the demo', lambda: all(event in _untagged(demo.output) for event in events))
    demo.signal(signal.SIGINT)
    assert demo.wait() == 0, demo.output
    output = _untagged(demo.output)
    assert set(pids) == {'users', 'comments', 'mailer', 'push'} and len(set(pids.values())) == 4
    for event in EVENTS:
        assert event.format(**pids) in output, event
    assert 'ERROR' not in output and 'Traceback' not in output
