"""``marun --reload``: a real marun in a project directory of its own, on the memory backend; a source
file changes and the group runs again, the new code in it, after the same graceful stop as SIGTERM."""
from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from microagent.cli.marun import build_parser
from microagent.cli.reload import child_arguments, source_filter
from tests.launcher_agents.support import ROOT, Starter, starter

pytest.importorskip('watchfiles')

SETTINGS = """
BUS = {'default': {'dsn': 'memory://'}}
AGENT = {'recorder': {'backend': 'proj_agents.Recorder', 'bus': 'default'}}
"""

AGENTS = """
import os
from pathlib import Path

from microagent import MicroAgent, on

VERSION = {version}


class Recorder(MicroAgent):
    def mark(self, event: str) -> None:
        Path(os.environ['LAUNCHER_TEST_DIR'], f'v{{VERSION}}.{{event}}').write_text(str(os.getpid()))

    @on('post_start')
    def started(self) -> None:
        self.mark('started')

    @on('pre_stop')
    def stopping(self) -> None:
        self.mark('stopped')
"""


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    with starter(tmp_path) as run:
        yield run


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / 'project'
    folder.mkdir()
    (folder / 'proj_settings.py').write_text(SETTINGS)
    (folder / 'proj_agents.py').write_text(AGENTS.format(version=1))
    (folder / '.venv' / 'lib').mkdir(parents=True)
    return folder


def _env() -> dict[str, str]:
    """The child must import this checkout, whatever directory it runs in."""
    return {'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}


@pytest.mark.parametrize('mode', ['single-process', 'agent processes, Ctrl-C'])
def test_a_changed_file_restarts_the_group_gracefully_and_is_named(start: Starter, project: Path, mode: str) -> None:
    one = mode == 'single-process'
    run = start('marun', '--reload', *(['--single-process'] if one else []), 'proj_settings', '--grace', '1',
                cwd=project, env=_env(), own_group=not one)
    first = run.wait_file('v1.started')
    assert 'Reload: watching *.py under' in run.output

    (project / 'proj_agents.py').write_text(AGENTS.format(version=2))
    second = run.wait_file('v2.started')
    assert run.file('v1.stopped').read_text() == first  # pre_stop of the old group ran: the graceful stop
    assert second != first  # a new process, which imported the changed code
    assert 'Reload: proj_agents.py changed: restarting the group' in run.output

    if one:
        run.signal(signal.SIGINT)
    else:  # a terminal's Ctrl-C: the reloader, its marun and the agent processes get it at once
        run.signal_group(signal.SIGINT)
    assert run.wait() == 0, run.output
    assert run.file('v2.stopped').read_text() == second
    assert 'Received SIGINT: stopping the group' in run.output


def test_a_broken_change_waits_for_the_fix(start: Starter, project: Path) -> None:
    run = start('marun', '--reload', '--single-process', 'proj_settings', '--grace', '1', cwd=project, env=_env())
    run.wait_file('v1.started')
    (project / 'proj_agents.py').write_text('VERSION = (\n')  # a syntax error: the group cannot start
    run.wait_for('the failed start to be reported', lambda: 'waiting for a file change' in run.output)
    assert run.proc.poll() is None  # the reloader waits

    (project / 'proj_agents.py').write_text(AGENTS.format(version=3))
    run.wait_file('v3.started')
    assert 'Reload: proj_agents.py changed: starting the group again' in run.output
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.output
    assert run.file('v3.stopped').exists()


def test_what_is_watched() -> None:
    from watchfiles import Change

    watched = source_filter()
    assert watched(Change.modified, '/srv/app/myapp/agents.py')
    assert not watched(Change.modified, '/srv/app/myapp/notes.txt')
    for ignored in ('.venv/lib/x.py', 'venv/lib/x.py', 'myapp/__pycache__/agents.py', '.git/hooks/x.py',
                    '.mypy_cache/x.py', 'build/lib/site-packages/x.py'):
        assert not watched(Change.modified, f'/srv/app/{ignored}'), ignored


def test_the_child_gets_the_options_but_not_the_reloaders() -> None:
    args = build_parser().parse_args(['app.settings', '--reload', '--reload-dir', 'lib', '--grace', '3',
                                      '--single-process', '--http', '127.0.0.1:0', '--replicas', 'users=2'])
    assert child_arguments(args) == ['app.settings', '--grace', '3.0', '--log-level', 'INFO', '--log-format', 'text',
                                     '--replicas=users=2', '--single-process', '--http', '127.0.0.1:0']
