"""A grouped receiver run by marun on a real server: one member's agent process is killed with
SIGKILL mid-stream; another member handles what it held, and no signal is lost."""
from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from microagent.backends.memory import MemorySignalBus
from microagent.groups import GroupOptions, GroupQueue
from tests.conformance.backends import Backend
from tests.launcher_agents.agents import Ping, ping
from tests.launcher_agents.support import DEADLINE, ROOT, Run, Starter, starter

SIGNALS = 400
KILL_AFTER = 100
VISIBILITY = 2.0
#: what a member holds at most: its concurrency (4) and prefetch (4 x 4); RabbitMQ pushes 4
HELD = 4 + 16


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    with starter(tmp_path) as run:
        yield run


def billed(runs: list[Run]) -> Counter[int]:
    """Every number the members wrote, with how often."""
    numbers: Counter[int] = Counter()
    for run in runs:
        for path in run.workdir.glob('billed.*'):
            numbers.update(int(line) for line in path.read_text().split())
    return numbers


async def wait_until(what: str, check: Callable[[], bool], runs: list[Run]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE * 2
    while not check():
        assert loop.time() < deadline, f'{what}: not within {DEADLINE * 2}s\n' + '\n'.join(r.output for r in runs)
        await asyncio.sleep(0.05)  # other processes' side effects: nothing to await


@pytest.mark.parametrize('backend', ['redis', 'amqp', 'nats'], indirect=True)
async def test_a_member_killed_mid_stream_loses_nothing(backend: Backend, start: Starter) -> None:
    sender = backend.bus()
    assert not isinstance(sender, MemorySignalBus)
    # the sender knows the group too, so the backend's test cleanup deletes its store
    store = GroupQueue(ping, 'billing', options=GroupOptions(visibility_timeout=VISIBILITY))
    await sender.groups.transport.declare(store)
    env = {'GROUP_TEST_DSN': backend.dsn, 'GROUP_TEST_PREFIX': sender.prefix,
           'GROUP_TEST_VISIBILITY': str(VISIBILITY), 'PYTHONPATH': str(ROOT)}
    runs = [start('marun', 'tests.launcher_agents.groups_settings', env=env) for _ in range(2)]
    victim, survivor = runs
    await wait_until('both members started', lambda: all(r.file('billing.started').exists() for r in runs), runs)
    victim_pid = int(victim.file('billing.started').read_text())

    for number in range(SIGNALS):
        await sender[ping].send('shop', Ping(number=number))
        if number == KILL_AFTER:
            os.kill(victim_pid, signal.SIGKILL)

    await wait_until('every signal handled', lambda: set(billed(runs)) >= set(range(SIGNALS)), runs)
    counts = billed(runs)
    twice = sorted(number for number, times in counts.items() if times > 1)
    assert len(twice) <= HELD, f'more handled twice than the killed member could hold: {twice}'
    assert survivor.proc.poll() is None, survivor.output
    survivor.signal(signal.SIGINT)
    assert await asyncio.to_thread(survivor.wait) == 0, survivor.output
    assert await asyncio.to_thread(victim.wait) == 1  # its agent died: marun stopped its group
    assert 'Agent billing exited with signal SIGKILL' in victim.output
