"""marun and signals sent to its whole process group: a terminal's Ctrl-C, ``kill -INT -PGID`` and GNU
``timeout`` signal marun and its agent processes in the same instant (``timeout`` signals marun
itself, then the group), which is one request to stop, never a second one that kills."""
from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher_agents.support import Run, Starter, alive, starter

GROUP = 'tests.launcher_agents.group'


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    with starter(tmp_path) as run:
        yield run


def stopped_gracefully(run: Run, pids: dict[str, int]) -> None:
    assert run.wait() == 0, run.output
    for name, pid in pids.items():
        assert run.file(f'{name}.stopped').read_text() == str(pid)  # its pre_stop hooks ran
        assert not alive(pid)
    assert 'again' not in run.output and 'killing' not in run.output and 'stopping now' not in run.output


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_a_signal_to_marun_and_its_process_group_stops_it_gracefully(start: Starter, signum: int) -> None:
    run = start('marun', GROUP, own_group=True)
    pids = {name: run.pid_of(name) for name in ('alpha', 'beta')}

    run.signal(signum)        # what GNU timeout does: the command first,
    run.signal_group(signum)  # then its whole process group, agents included

    stopped_gracefully(run, pids)


def test_a_group_signal_stops_a_single_process_group_gracefully(start: Starter) -> None:
    run = start('marun', '--single-process', 'tests.launcher_agents.talk', own_group=True)
    pids = {name: run.pid_of(name) for name in ('pinger', 'listener')}

    run.signal(signal.SIGINT)
    run.signal_group(signal.SIGINT)

    stopped_gracefully(run, pids)


@pytest.mark.skipif(shutil.which('timeout') is None, reason='needs GNU timeout')
def test_marun_under_gnu_timeout_stops_gracefully_when_the_time_is_up(start: Starter) -> None:
    # SIGALRM is timeout's own "time is up": the test says when, not a clock
    run = start('marun', GROUP, own_group=True, wrap=['timeout', '--preserve-status', '-s', 'INT', '600'])
    pids = {name: run.pid_of(name) for name in ('alpha', 'beta')}

    run.signal(signal.SIGALRM)

    stopped_gracefully(run, pids)
    assert 'Received SIGINT: stopping the group' in run.output

