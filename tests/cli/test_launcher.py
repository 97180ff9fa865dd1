"""marun as a user runs it: real processes, real signals, agents that leave files behind."""
from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from microagent.cli.config import ConfigError, load_group
from microagent.cli.marun import run_group
from tests.launcher_agents.support import Starter, alive, starter

GROUP = 'tests.launcher_agents.group'


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    with starter(tmp_path) as run:
        yield run


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_a_signal_stops_every_agent_gracefully(start: Starter, signum: int) -> None:
    run = start('marun', GROUP)
    pids = {name: run.pid_of(name) for name in ('alpha', 'beta')}
    assert len({*pids.values(), run.proc.pid}) == 3  # one process per agent

    run.signal(signum)

    assert run.wait() == 0, run.output
    assert run.file('alpha.stopped').read_text() == str(pids['alpha'])  # pre_stop ran in the agent
    assert run.file('beta.stopped').read_text() == str(pids['beta'])
    assert f'Received {signal.Signals(signum).name}: stopping the group' in run.output
    assert not any(alive(pid) for pid in pids.values())


def test_in_flight_work_finishes_within_the_grace(start: Starter) -> None:
    run = start('marun', 'tests.launcher_agents.slow', env={'LAUNCHER_TEST_WORK': '1'})
    run.wait_file('worker.begun')
    run.wait_file('idle.started')

    run.signal(signal.SIGTERM)

    assert run.wait() == 0, run.output
    assert run.file('worker.done').exists()  # the task under way was let finish
    assert run.file('worker.stopped').exists()
    assert run.file('idle.stopped').exists()


def test_the_grace_bounds_work_that_does_not_finish(start: Starter) -> None:
    run = start('marun', 'tests.launcher_agents.slow', '--grace', '0.2', env={'LAUNCHER_TEST_WORK': '600'})
    run.wait_file('worker.begun')

    run.signal(signal.SIGTERM)

    assert run.wait() == 0, run.output
    assert not run.file('worker.done').exists()
    assert run.file('worker.stopped').exists()


def test_a_second_signal_kills_what_is_left(start: Starter) -> None:
    run = start('marun', 'tests.launcher_agents.slow', '--grace', '600', env={'LAUNCHER_TEST_WORK': '600'})
    run.wait_file('worker.begun')
    run.signal(signal.SIGTERM)
    run.wait_file('worker.stopped')  # stopping, waiting for its task
    run.wait_for('a second signal to count', lambda: 'a second SIGINT or SIGTERM now means' in run.output)

    run.signal(signal.SIGTERM)

    assert run.wait() == 1, run.output
    assert 'Received SIGTERM again: killing the agents' in run.output
    assert not run.file('worker.done').exists()


def test_a_killed_agent_stops_the_group(start: Starter) -> None:
    run = start('marun', GROUP)
    alpha = run.pid_of('alpha')
    run.pid_of('beta')

    os.kill(alpha, signal.SIGKILL)

    assert run.wait() == 1, run.output
    assert 'Agent alpha exited with signal SIGKILL: stopping the group' in run.output
    assert run.file('beta.stopped').exists()
    assert not run.file('alpha.stopped').exists()


def test_orphaned_agents_stop_by_themselves(start: Starter) -> None:
    run = start('marun', GROUP)
    pids = [run.pid_of('alpha'), run.pid_of('beta')]

    run.proc.kill()  # no chance to stop anything
    run.proc.wait()

    run.wait_file('alpha.stopped', needs_process=False)  # each ran its pre_stop hooks on its own
    run.wait_file('beta.stopped', needs_process=False)
    run.wait_for('the agent processes to exit', lambda: not any(alive(pid) for pid in pids), needs_process=False)
    assert 'Stopping: the supervisor is gone' in run.output


def test_an_agent_failing_to_start_stops_the_group(start: Starter) -> None:
    run = start('marun', 'tests.launcher_agents.failing')

    assert run.wait() == 1, run.output
    assert 'RuntimeError: cannot reach the database' in run.output
    assert 'Agent broken exited with code 1: stopping the group' in run.output


def test_an_agent_whose_server_ends_stops_the_group(start: Starter) -> None:
    run = start('marun', 'tests.launcher_agents.server')

    assert run.wait() == 1, run.output
    assert 'Agent server exited with code 0: stopping the group' in run.output
    assert run.file('server.stopped').exists()


def test_single_process_mode_runs_the_group_in_one_event_loop(start: Starter) -> None:
    run = start('marun', '--single-process', 'tests.launcher_agents.talk')
    sender, number = run.wait_file('listener.pinged').split()  # met on the in-memory bus
    assert (sender, int(number) > 0) == ('pinger', True)
    assert run.pid_of('pinger') == run.pid_of('listener') == run.proc.pid

    run.signal(signal.SIGTERM)

    assert run.wait() == 0, run.output
    assert run.file('pinger.stopped').exists()
    assert run.file('listener.stopped').exists()


def test_single_process_mode_gives_up_on_a_second_signal(start: Starter) -> None:
    run = start('marun', '--single-process', '--grace', '600', 'tests.launcher_agents.slow',
                env={'LAUNCHER_TEST_WORK': '600'})
    run.wait_file('worker.begun')
    run.signal(signal.SIGINT)
    run.wait_file('worker.stopped')
    run.wait_for('a second signal to count', lambda: 'a second SIGINT or SIGTERM now means' in run.output)

    run.signal(signal.SIGINT)

    assert run.wait() == 1, run.output
    assert 'Received SIGINT again: stopping now' in run.output
    assert not run.file('worker.done').exists()


def test_single_process_mode_stops_when_an_agent_fails(start: Starter) -> None:
    run = start('marun', '--single-process', 'tests.launcher_agents.failing')

    assert run.wait() == 1, run.output
    assert 'Agent broken failed: stopping the group' in run.output
    assert run.file('steady.stopped').exists()


def test_run_group_in_process_stops_after_its_duration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the demo does: the group stops by itself, gracefully, after ``stop_after`` seconds."""
    monkeypatch.setenv('LAUNCHER_TEST_DIR', str(tmp_path))
    monkeypatch.delitem(sys.modules, 'tests.launcher_agents.talk', raising=False)  # reads the env var on import

    assert run_group(['tests.launcher_agents.talk'], single_process=True, stop_after=0.2, grace=1) == 0
    assert {path.name for path in tmp_path.iterdir()} >= {'pinger.started', 'pinger.stopped',
                                                          'listener.started', 'listener.stopped'}


# logging

def test_text_log_lines_name_the_agent_and_its_pid(start: Starter) -> None:
    run = start('marun', GROUP)
    alpha = run.pid_of('alpha')
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    assert f'INFO    alpha[{alpha}]: Started Recorder as \'alpha\'' in run.output
    assert f'marun[{run.proc.pid}] microagent.launcher: Started agent alpha (pid {alpha})' in run.output


def test_json_logs_are_one_object_per_line(start: Starter) -> None:
    run = start('marun', GROUP, '--log-format', 'json', '--log-level', 'debug')
    alpha = run.pid_of('alpha')
    run.signal(signal.SIGTERM)
    assert run.wait() == 0

    records = [json.loads(line) for line in run.output.splitlines()]
    assert {'time', 'level', 'agent', 'pid', 'logger', 'message'} <= set(records[0])
    stops = [r for r in records if r['message'] == 'Stopped']
    assert {(r['agent'], r['pid']) for r in stops} >= {('alpha', alpha)}
    assert any(r['level'] == 'DEBUG' for r in records)


def test_the_log_level_hides_lower_levels(start: Starter) -> None:
    run = start('marun', GROUP, '--log-level', 'WARNING')
    run.pid_of('alpha')
    run.pid_of('beta')
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    assert run.output == ''


# bad configuration: fails before any process starts

@pytest.mark.parametrize(('module', 'message'), [
    ('tests.launcher_agents.bad_path', "tests.launcher_agents.bad_path: AGENT['ghost']: cannot import backend "
                                       "'tests.launcher_agents.agents.NoSuchAgent': module "
                                       "'tests.launcher_agents.agents' has no 'NoSuchAgent'"),
    ('tests.launcher_agents.bad_missing', "BROKER['main']: missing 'backend'"),
    ('tests.launcher_agents.bad_bus', "AGENT['listener']: bus 'main' is not defined in BUS (defined: 'default')"),
    ('tests.launcher_agents.nowhere', "cannot import configuration module 'tests.launcher_agents.nowhere'"),
])
def test_a_bad_configuration_fails_before_anything_starts(start: Starter, module: str, message: str) -> None:
    run = start('marun', GROUP, module)

    assert run.wait() == 2
    assert message in run.output
    assert run.output.startswith('marun: error: ')
    assert list(run.workdir.glob('*.started')) == []  # not even the good agents of GROUP


# configuration checks, in-process



RECORDER = 'tests.launcher_agents.agents.Recorder'
LISTENER = 'tests.launcher_agents.agents.Listener'
MEMORY_BUS = {'backend': 'microagent.tools.memory.MemorySignalBus'}


@pytest.mark.parametrize(('sections', 'message'), [
    ({'AGENT': {'a': {'backend': RECORDER, 'events': {'enable_magic': True}}}},
     "AGENT['a']: 'events' must map some of enable_periodic_tasks"),
    ({'AGENT': {'a': {'backend': RECORDER, 'settings': ['x']}}}, "AGENT['a']: 'settings' must be a dict"),
    ({'AGENT': {'a': {'backend': RECORDER, 'colour': 'red'}}},
     "AGENT['a']: wrong arguments for Recorder: got an unexpected keyword argument 'colour'"),
    ({'AGENT': {'a': {'backend': 'microagent.tools.memory.MemoryBroker'}}},
     "AGENT['a']: backend <class 'microagent.backends.memory.MemoryBroker'> is not a MicroAgent subclass"),
    ({'AGENT': {'a': {'backend': LISTENER}}}, "AGENT['a']: Listener receives signals but names no 'bus'"),
    ({'AGENT': {'a.b': {'backend': RECORDER}}}, "AGENT['a.b']: an agent name is made of letters"),
    ({'AGENT': {'a': {'backend': 'Recorder'}}}, "AGENT['a']: 'backend' must be a dotted path"),
    ({'BUS': {'b': {'backend': 'tests.launcher_agents.agents.StrictBus', 'prefix': 'X'}}},
     "BUS['b']: wrong arguments for StrictBus: missing a required argument: 'dsn'"),
    ({'BUS': {'b': {'backend': 'microagent.tools.memory.MemoryBroker'}}},
     "BUS['b']: backend <class 'microagent.backends.memory.MemoryBroker'> is not a subclass of AbstractSignalBus"),
    ({'BUS': {'b': 'memory://'}}, "BUS['b']: an entry is a dict with a 'backend', got str"),
    ({'AGENT': []}, 'AGENT must be a dict of entries, got list'),
    ({'SETTINGS': {}}, 'defines none of AGENT, BUS, BROKER'),
    ({'BUS': {'b': MEMORY_BUS}}, 'no agent is defined in'),
])
def test_configuration_mistakes_name_their_entry(config_module: Any, sections: dict[str, Any],
                                                 message: str) -> None:
    module = config_module(**sections)
    with pytest.raises(ConfigError) as caught:
        load_group([module])
    assert message in str(caught.value)
    if 'no agent' not in message:
        assert str(caught.value).startswith(module)


def test_agent_names_are_unique_in_a_group(config_module: Any) -> None:
    first = config_module(AGENT={'a': {'backend': RECORDER}})
    second = config_module(AGENT={'a': {'backend': RECORDER}})
    with pytest.raises(ConfigError) as caught:
        load_group([first, second])
    assert str(caught.value) == f"{second}: AGENT['a']: an agent named 'a' is already defined in {first}"


def test_each_module_names_its_own_buses(config_module: Any) -> None:
    """As in 1.x, ``'bus': 'default'`` means the BUS of the agent's own module."""
    first = config_module(BUS={'default': {**MEMORY_BUS, 'dsn': 'memory://one'}},
                          AGENT={'a': {'backend': LISTENER, 'bus': 'default'}})
    second = config_module(BUS={'default': {**MEMORY_BUS, 'dsn': 'memory://two'}},
                           AGENT={'b': {'backend': LISTENER, 'bus': 'default', 'settings': {'x': 1},
                                        'events': {'enable_periodic_tasks': False}}})
    a, b = load_group([first, second])
    agent = b.build()
    assert (a.bus and a.bus.options['dsn'], agent.bus.dsn) == ('memory://one', 'memory://two')
    assert agent.settings == {'x': 1} and b.events == {'enable_periodic_tasks': False}
    assert agent.log.name == 'agent.b' and agent.bus.log.name == 'agent.b.bus'
    assert b.build().settings is not agent.settings  # every build gets its own copy


def test_a_memory_backend_shared_across_processes_is_refused(start: Starter) -> None:
    """Each process would have its own in-memory bus: the agents would never meet, silently."""
    run = start('marun', 'tests.launcher_agents.talk')

    assert run.wait() == 2, run.output
    assert run.output.startswith("marun: error: tests.launcher_agents.talk: BUS['default']: an in-memory "
                                 "backend lives in one process, but agents 'pinger', 'listener' would each "
                                 'run in their own: run the group with --single-process')
    assert not run.file('pinger.started').exists()


def test_the_memory_demo_needs_single_process(start: Starter) -> None:
    run = start('marun', 'examples.settings_memory')

    assert run.wait() == 2, run.output
    assert 'with --single-process' in run.output
