"""marun replicas: an entry's ``replicas`` (or ``--replicas NAME=N``) runs N copies of an agent;
their grouped receivers share each signal, named after the entry."""
from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from microagent import MicroAgent
from microagent.cli.config import ConfigError, load_group, with_replicas
from microagent.cli.marun import main, run_agents, run_group
from tests.launcher_agents.agents import Billing
from tests.launcher_agents.support import DEADLINE

AGENTS = 'tests.launcher_agents.agents'


def billing_group(directory: Path, replicas: int | None = 3) -> dict[str, Any]:
    billing: dict[str, Any] = {'backend': f'{AGENTS}.Billing', 'bus': 'default',
                               'settings': {'dir': str(directory), 'name': 'billing'}}
    if replicas is not None:
        billing['replicas'] = replicas
    return {'BUS': {'default': {'dsn': 'memory://'}}, 'AGENT': {
        'pinger': {'backend': f'{AGENTS}.Pinger', 'bus': 'default',
                   'settings': {'dir': str(directory), 'name': 'pinger'}},
        'billing': billing}}


async def test_replicas_in_one_process_share_each_signal_of_their_group(
        config_module: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    billed: Counter[int] = Counter()
    by_replica: Counter[int] = Counter()
    enough = asyncio.Event()

    def heard(agent: MicroAgent, number: int) -> None:
        billed[number] += 1
        by_replica[id(agent)] += 1
        if len(billed) >= 30:
            enough.set()

    monkeypatch.setattr(Billing, 'heard', [heard])
    configs = [copy for config in load_group([config_module(**billing_group(tmp_path))])
               for copy in config.copies()]
    assert [config.process_name for config in configs] == ['pinger', 'billing.1', 'billing.2', 'billing.3']
    built = configs[1].build()
    assert built.receivers[0].grouping is not None and built.receivers[0].grouping.name == 'billing'

    stopping = asyncio.Event()
    async with asyncio.timeout(DEADLINE):
        running = asyncio.create_task(run_agents(configs, stopping, grace=1))
        await enough.wait()
        stopping.set()
        assert await running == 0
    assert set(billed.values()) == {1}, 'a ping was billed by two replicas'
    assert len(by_replica) > 1, 'the replicas did not share the work'


def test_marun_replicas_overrides_the_entry(config_module: Any, tmp_path: Path) -> None:
    configs = load_group([config_module(**billing_group(tmp_path, replicas=None))])
    assert [c.replicas for c in configs] == [1, 1]
    changed = with_replicas(configs, {'billing': 2})
    assert [c.process_name for config in changed for c in config.copies()] == ['pinger', 'billing.1', 'billing.2']


@pytest.mark.parametrize('replicas', [0, 65, 'two', True, 2.0])
def test_a_bad_replica_count_names_the_entry(config_module: Any, tmp_path: Path, replicas: object) -> None:
    with pytest.raises(ConfigError, match=r"AGENT\['billing'\].*'replicas' must be an integer from 1 to 64"):
        load_group([config_module(**billing_group(tmp_path, replicas=replicas))])  # type: ignore[arg-type]


def test_replicas_of_an_unknown_agent_is_an_error(config_module: Any, tmp_path: Path) -> None:
    configs = load_group([config_module(**billing_group(tmp_path))])
    with pytest.raises(ConfigError, match="--replicas: no agent named 'biling'"):
        with_replicas(configs, {'biling': 2})


@pytest.mark.parametrize('given', ['billing', 'billing=', '=2', 'billing=0', 'billing=x', 'billing=99'])
def test_a_malformed_replicas_option_is_a_usage_error(given: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(['some.settings', '--replicas', given])
    assert exited.value.code == 2
    assert '--replicas' in capsys.readouterr().err


def test_replicas_of_a_memory_bus_need_one_process(config_module: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"in-memory backend lives in one process.*'billing.1', 'billing.2'"):
        run_group([config_module(**billing_group(tmp_path, replicas=2))])
