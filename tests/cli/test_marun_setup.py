"""SETUP in marun settings: a function each process that runs agents calls before it builds them
(where users configure the tracing SDK), and whose mistakes are configuration errors naming SETUP."""
from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from microagent.cli.config import ConfigError, load_group
from tests.launcher_agents.support import Starter, starter

WITH_SETUP = 'tests.launcher_agents.with_setup'
BROKEN = "tests.launcher_agents.bad_setup: SETUP 'tests.launcher_agents.hooks:broken' failed: " \
         'RuntimeError: no collector at localhost:4317'


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    with starter(tmp_path) as run:
        yield run


def test_setup_runs_in_every_agent_process_before_its_agent_is_built(start: Starter) -> None:
    run = start('marun', WITH_SETUP)
    pids = {name: run.pid_of(name) for name in ('alpha', 'beta')}

    for name, pid in pids.items():
        assert run.file(f'setup-{pid}').read_text() == 'ran'
        assert run.wait_file(f'{name}.setup') == 'before'
    assert not run.file(f'setup-{run.proc.pid}').exists()  # the supervisor runs no agent
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.output


def test_setup_runs_once_in_the_single_process(start: Starter) -> None:
    run = start('marun', '--single-process', WITH_SETUP)
    assert run.pid_of('alpha') == run.pid_of('beta') == run.proc.pid

    assert [path.name for path in run.workdir.glob('setup-*')] == [f'setup-{run.proc.pid}']
    assert (run.wait_file('alpha.setup'), run.wait_file('beta.setup')) == ('before', 'before')
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.output


def test_a_failing_setup_is_a_configuration_error_of_the_single_process(start: Starter) -> None:
    run = start('marun', '--single-process', 'tests.launcher_agents.bad_setup')

    assert run.wait() == 2, run.output
    assert run.output.startswith(f'marun: error: {BROKEN}')
    assert not run.file('alpha.started').exists()


def test_a_failing_setup_stops_the_group_before_its_agent_starts(start: Starter) -> None:
    run = start('marun', 'tests.launcher_agents.bad_setup')

    assert run.wait() == 2, run.output  # the agent's configuration error is the group's
    assert f'marun: error: {BROKEN}' in run.output
    assert 'Agent alpha exited with code 2: stopping the group' in run.output
    assert not run.file('alpha.started').exists()


@pytest.mark.parametrize(('setup', 'message'), [
    (42, "SETUP: the path of a function such as 'myapp.otel:setup' is expected, got 42"),
    ('setup', "SETUP: a function must be a dotted path such as 'package.module.Class', got 'setup'"),
    ('tests.launcher_agents.hooks:missing', "SETUP: cannot import function 'tests.launcher_agents.hooks.missing': "
                                            "module 'tests.launcher_agents.hooks' has no 'missing'"),
    ('tests.launcher_agents.hooks:DONE', "SETUP: 'tests.launcher_agents.hooks:DONE' is not a function"),
    ('tests.launcher_agents.hooks:SetUp', "SETUP: 'tests.launcher_agents.hooks:SetUp' is not a function"),
    ('tests.launcher_agents.hooks.needs', "SETUP: 'tests.launcher_agents.hooks.needs' is called with no arguments: "
                                          "missing a required argument: 'endpoint'"),
])
def test_setup_mistakes_are_configuration_errors_naming_setup(config_module: Any, setup: Any, message: str) -> None:
    module = config_module(SETUP=setup, AGENT={'a': {'backend': 'tests.launcher_agents.agents.Recorder'}})

    with pytest.raises(ConfigError) as caught:
        load_group([module])

    assert str(caught.value) == f'{module}: {message}'
