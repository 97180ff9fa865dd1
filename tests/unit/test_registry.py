"""The backend registry: a third-party backend registered through the entry point group is taken by
TestGroup, the CLI and marun (settings and a running group), by its scheme alone; unknown schemes
name those there are."""
from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

import microagent.backends as registry
from microagent import InvalidHeader, MicroAgent, MissConfig, Queue, Signal, consumer, receiver
from microagent.cli.config import load_group, load_module
from microagent.cli.main import main
from microagent.cli.marun import run_agents
from microagent.testing import TestGroup
from tests.cli.test_cli import _memory
from tests.helpers import eventually
from tests.toy_backend import ToyBroker, ToySignalBus


class Ping(msgspec.Struct):
    n: int


@pytest.fixture
def toy_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A distribution that declares the toy backend in its entry points, on sys.path."""
    dist = tmp_path / 'toy_backend-1.0.dist-info'
    dist.mkdir()
    (dist / 'METADATA').write_text('Metadata-Version: 2.1\nName: toy-backend\nVersion: 1.0\n')
    (dist / 'entry_points.txt').write_text('[microagent.backends]\ntoy = tests.toy_backend:BACKEND\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, '_registered', dict(registry._registered))
    monkeypatch.setattr(registry, '_loaded', False)
    monkeypatch.setattr(registry, '_reserved', None)
    yield


@pytest.mark.usefixtures('toy_installed')
async def test_testgroup_runs_agents_on_a_registered_backend(unique: str) -> None:
    pinged = Signal(f'toy_ping_{unique}', Ping)
    jobs = Queue(f'toy_jobs_{unique}', Ping)

    class ToyAgent(MicroAgent):
        @receiver(pinged)
        async def on_ping(self, ping: Ping) -> None:
            await self.broker[jobs].send(Ping(n=ping.n + 1))

        @consumer(jobs)
        async def on_job(self, job: Ping) -> None: ...

    async with TestGroup(ToyAgent, dsn=f'toy://{unique}') as group:
        assert isinstance(group[ToyAgent].bus, ToySignalBus) and isinstance(group[ToyAgent].broker, ToyBroker)
        await group.bus[pinged].send('test', Ping(n=1))
        assert await group.handler(ToyAgent.on_job).wait() == [Ping(n=2)]


@pytest.mark.usefixtures('toy_installed')
def test_marun_settings_take_the_class_from_the_dsn_scheme(tmp_path: Path, unique: str) -> None:
    module = f'toy_settings_{unique}'
    (tmp_path / f'{module}.py').write_text(
        "BUS = {'default': {'dsn': 'toy://settings'}}\n"
        "BROKER = {'default': {'dsn': 'toy://settings'}}\n"
        "AGENT = {'a': {'backend': 'microagent.MicroAgent', 'bus': 'default', 'broker': 'default'}}\n")
    try:
        [agent] = load_module(module)
    finally:
        sys.modules.pop(module, None)
    assert agent.bus is not None and agent.bus.factory is ToySignalBus
    assert agent.broker is not None and agent.broker.factory is ToyBroker


@pytest.mark.usefixtures('toy_installed')
async def test_marun_runs_a_group_on_a_registered_backend(tmp_path: Path, unique: str) -> None:
    module = f'toy_group_{unique}'
    (tmp_path / f'{module}.py').write_text(
        f"BUS = {{'default': {{'dsn': 'toy://group-{unique}'}}}}\n"
        "AGENT = {\n"
        f"    'pinger': {{'backend': 'tests.launcher_agents.agents.Pinger', 'bus': 'default',"
        f" 'settings': {{'dir': {str(tmp_path)!r}, 'name': 'pinger'}}}},\n"
        f"    'listener': {{'backend': 'tests.launcher_agents.agents.Listener', 'bus': 'default',"
        f" 'settings': {{'dir': {str(tmp_path)!r}, 'name': 'listener'}}}},\n"
        "}\n")
    try:
        configs = load_group([module])
    finally:
        sys.modules.pop(module, None)
    stopping = asyncio.Event()
    running = asyncio.create_task(run_agents(configs, stopping, grace=1))

    async def pinged() -> bool:
        return (tmp_path / 'listener.pinged').exists()

    await eventually(pinged)  # the two agents met on the toy bus
    stopping.set()
    assert await running == 0


@pytest.mark.usefixtures('toy_installed')
def test_the_cli_takes_a_registered_scheme(capsys: pytest.CaptureFixture[str], unique: str) -> None:
    _, queue = _memory(unique, 7)  # a dead letter on the hub that toy://{unique} wraps
    assert main(['dead-letters', 'list', queue.name, '--broker', f'toy://{unique}']) == 0
    assert f"1 dead letters on queue '{queue.name}' (toy://{unique})" in capsys.readouterr().out


@pytest.mark.usefixtures('toy_installed')
def test_a_registered_backend_reserves_its_header_names() -> None:
    assert registry.reserving_backend('x-toy-seq') is registry.backend_named('toy')
    with pytest.raises(InvalidHeader, match='the toy backend writes it itself'):
        from microagent.message import check_user_headers
        check_user_headers({'X-Toy-Seq': '1'})


@pytest.mark.usefixtures('toy_installed')
def test_a_scheme_taken_twice_is_refused() -> None:
    with pytest.raises(MissConfig, match="scheme toy:// is already served by 'toy'"):
        registry.register(registry.Backend('toy2', ('toy',), None, None, system='toy2', package='toy2'))


def test_an_unknown_scheme_names_the_schemes_there_are() -> None:
    with pytest.raises(registry.UnknownScheme, match=r"'kafka://h:9092'.*redis://.*amqp://.*nats://.*memory://"):
        registry.backend_for('kafka://h:9092')


def test_a_missing_client_names_the_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    unique: str) -> None:
    module = f'needs_client_{unique}'
    (tmp_path / f'{module}.py').write_text('import microagent_no_such_client\n\nclass Bus: ...\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = registry.Backend('gone', ('gone',), f'{module}.Bus', None, system='gone', package=module, extra='gone')
    with pytest.raises(MissConfig, match=r"needs microagent_no_such_client: pip install 'microagent\[gone\]'"):
        broken.load('bus')
    with pytest.raises(MissConfig, match='the gone backend has no broker'):
        broken.load('broker')
