"""The names 1.x code imports, module by module, exist here or fail with an error that says why."""
from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import msgspec
import pytest

import microagent
from microagent import (
    DeclarationError,
    DoubleLoadError,
    MicroAgent,
    Signal,
    SignalNotFound,
    UsageError,
    launcher,
    load_stuff,
    receiver,
)
from microagent.tools.memory import MemorySignalBus


def _write(tmp_path: Path, document: dict[str, object], name: str = 'stuff.json') -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return f'file://{path}'


def test_the_1x_launcher_names_exist() -> None:
    assert launcher.ServerInterrupt is microagent.ServerInterrupt
    assert callable(launcher.load_configuration) and callable(launcher.init_agent)
    assert issubclass(microagent.DoubleLoadError, DeclarationError)


def test_load_configuration_and_init_agent_build_an_agent_as_1x_did() -> None:
    unfolded = dict(launcher.load_configuration('tests.launcher_agents.group'))
    assert set(unfolded) == {'alpha', 'beta'}
    backend, cfg = unfolded['alpha']
    assert backend == 'tests.launcher_agents.agents.Recorder'
    assert cfg['bus'] == ('microagent.tools.memory.MemorySignalBus', {'dsn': 'memory://launcher'})
    assert cfg['broker'] is None
    agent = launcher.init_agent(backend, cfg)
    assert type(agent).__name__ == 'Recorder' and isinstance(agent.bus, MemorySignalBus)
    assert agent.settings['name'] == 'alpha'
    assert launcher.init_agent(*unfolded['beta']).settings['name'] == 'beta'


def test_init_agent_names_a_backend_that_is_not_an_agent() -> None:
    with pytest.raises(launcher.ConfigError, match=r"'microagent\.tools\.memory\.MemorySignalBus'"):
        launcher.init_agent('microagent.tools.memory.MemorySignalBus', {})


def test_loading_the_same_declarations_twice_is_harmless(tmp_path: Path, unique: str) -> None:
    source = _write(tmp_path, {'signals': [{'name': f'twice_{unique}', 'providing_args': ['a']}]})
    first, _ = load_stuff(source)
    second, _ = load_stuff(source)
    assert getattr(first, f'twice_{unique}') == getattr(second, f'twice_{unique}')


def test_a_second_load_with_another_contract_is_a_double_load_error(tmp_path: Path, unique: str) -> None:
    load_stuff(_write(tmp_path, {'signals': [{'name': f'dbl_{unique}', 'providing_args': ['a']}]}))
    changed = _write(tmp_path, {'signals': [{'name': f'dbl_{unique}', 'providing_args': {'a': 'integer'}}]},
                     'changed.json')
    with pytest.raises(DoubleLoadError, match=f'dbl_{unique}'):
        load_stuff(changed)


def test_jsonlib_key_imports_and_records_the_module(tmp_path: Path, unique: str) -> None:
    before = Signal._jsonlib
    try:
        load_stuff(_write(tmp_path, {'signals': [{'name': f'js_{unique}', 'providing_args': []}],
                                     'jsonlib': 'tests.unit.test_compat_1x_names'}))
        assert Signal._jsonlib is sys.modules['tests.unit.test_compat_1x_names']
    finally:
        Signal.set_jsonlib(before)


def test_jsonlib_key_naming_a_missing_module_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DeclarationError, match=r'"jsonlib".*no_such_json_module'):
        load_stuff(_write(tmp_path, {'jsonlib': 'no_such_json_module'}))


def test_set_jsonlib_rejects_a_module_without_dumps_and_loads() -> None:
    with pytest.raises(UsageError, match="'empty'"):
        Signal.set_jsonlib(types.ModuleType('empty'))


def test_default_prefix_other_than_pubsub_says_where_the_prefix_goes(tmp_path: Path, unique: str) -> None:
    load_stuff(_write(tmp_path, {'default_prefix': 'PUBSUB'}))
    with pytest.raises(DeclarationError, match=r"default_prefix.*prefix='APP'"):
        load_stuff(_write(tmp_path, {'default_prefix': 'APP',
                                     'signals': [{'name': f'pfx_{unique}', 'providing_args': []}]}))
    with pytest.raises(SignalNotFound):  # the document declared nothing
        Signal.get(f'pfx_{unique}')


def test_kafka_import_fails_naming_the_supported_backends() -> None:
    try:
        with pytest.raises(ImportError, match='no Kafka backend') as caught:
            importlib.import_module('microagent.tools.kafka')
        assert isinstance(caught.value, microagent.MicroAgentError)
        for backend in ('memory', 'redis', 'amqp'):
            assert f'microagent.tools.{backend}' in str(caught.value)
    finally:
        sys.modules.pop('microagent.tools.kafka', None)


# a 1.x JSON module stand-in (test_jsonlib_key_imports_and_records_the_module loads this very module)
dumps, loads = json.dumps, json.loads


class Query(msgspec.Struct, frozen=True):
    n: int


ASKED = Signal('compat_names_asked', Query, returns=int)


class CountingBase(MicroAgent):
    @receiver(ASKED)
    async def count(self, query: Query) -> int:
        return query.n


class CountingChild(CountingBase):
    pass


async def test_an_inherited_receiver_answers_under_the_1x_key(unique: str) -> None:
    """1.x keys an answer by the handler's ``__qualname__``: the class that defines it."""
    async with CountingChild(bus=MemorySignalBus(f'memory://{unique}')) as agent:
        assert await agent.bus[ASKED].call('x', Query(n=3), timeout=5) == {'CountingBase.count': 3}
