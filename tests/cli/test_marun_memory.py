"""marun settings on the in-memory backend: the agents that name one BUS or BROKER entry meet on it,
whatever its DSN says, as they would on one Redis."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from microagent.backends.memory import MemoryBroker, MemoryHub, MemorySignalBus
from microagent.cli.config import load_group
from microagent.cli.marun import run_agents
from tests.launcher_agents.agents import Listener
from tests.launcher_agents.support import DEADLINE

AGENTS = 'tests.launcher_agents.agents'


def hub(resource: object) -> MemoryHub:
    assert isinstance(resource, MemorySignalBus | MemoryBroker)
    return resource.hub


def talk(directory: Path, bus: dict[str, Any]) -> dict[str, Any]:
    """A pinger and a listener that name the same BUS entry."""
    return {'BUS': {'default': bus}, 'AGENT': {
        name: {'backend': f'{AGENTS}.{cls}', 'bus': 'default', 'settings': {'dir': str(directory), 'name': name}}
        for name, cls in (('pinger', 'Pinger'), ('listener', 'Listener'))}}


@pytest.mark.parametrize('bus', [{'dsn': 'memory://'},
                                 {'backend': 'microagent.tools.memory.MemorySignalBus'},
                                 {'backend': 'tests.launcher_agents.agents.StrictBus', 'dsn': 'memory://'}],
                         ids=['unnamed-dsn', 'no-dsn', 'subclass'])
async def test_agents_of_one_entry_hear_each_other_in_one_process(
        config_module: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bus: dict[str, Any]) -> None:
    heard = asyncio.Event()
    monkeypatch.setattr(Listener, 'heard', [lambda name: heard.set()])
    configs = load_group([config_module(**talk(tmp_path, bus))])
    stopping = asyncio.Event()

    async with asyncio.timeout(DEADLINE):  # only reached when the pinger is never heard
        running = asyncio.create_task(run_agents(configs, stopping, grace=1))
        await heard.wait()
        stopping.set()
        assert await running == 0

    assert (tmp_path / 'listener.pinged').read_text().startswith('pinger ')
    assert (tmp_path / 'listener.stopped').exists()


def test_an_entry_is_one_hub_and_two_entries_are_two(config_module: Any) -> None:
    module = config_module(
        BUS={'one': {'dsn': 'memory://'}, 'two': {'dsn': 'memory://'}, 'named': {'dsn': 'memory://mine'}},
        BROKER={'one': {'dsn': 'memory://'}},
        AGENT={name: {'backend': f'{AGENTS}.Recorder', 'bus': bus, 'broker': 'one'}
               for name, bus in (('a', 'one'), ('b', 'one'), ('c', 'two'), ('d', 'named'))})
    a, b, c, d = (config.build() for config in load_group([module]))

    assert hub(a.bus) is hub(b.bus) is MemoryHub.named(f'{module}/BUS/one')
    assert hub(c.bus) is MemoryHub.named(f'{module}/BUS/two') and hub(c.bus) is not hub(a.bus)
    assert hub(d.bus) is MemoryHub.named('mine')  # a DSN that names its hub keeps it
    assert hub(a.broker) is hub(d.broker) is MemoryHub.named(f'{module}/BROKER/one')
    assert a.bus.dsn == f'memory://{module}/BUS/one'


def test_an_explicit_hub_is_left_alone(config_module: Any) -> None:
    given = MemoryHub()
    module = config_module(BUS={'default': {'dsn': 'memory://', 'hub': given}},
                           AGENT={'a': {'backend': f'{AGENTS}.Recorder', 'bus': 'default'}})
    (config,) = load_group([module])

    assert hub(config.build().bus) is given
