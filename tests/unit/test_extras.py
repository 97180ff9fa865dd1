"""A missing optional dependency names the extra that installs it, whichever way it is reached: a
class named by dotted path in marun settings (bus, broker, agent, middleware), ``--backend`` on the
command line, or a DSN scheme. Each case runs in a fresh interpreter where the client library's
module is blocked (``sys.modules[name] = None`` makes ``import name`` fail as if not installed)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from microagent.backends import all_backends
from microagent.extras import OTHER_EXTRAS, extra_for

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, blocked: str, argv: list[str], settings: str = '', agent_module: str = '') -> str:
    """``microagent`` or ``marun`` with ``argv``, ``blocked`` missing; the output, error included."""
    if settings:
        (tmp_path / 'extras_settings.py').write_text(textwrap.dedent(settings))
    if agent_module:
        (tmp_path / 'extras_agents.py').write_text(textwrap.dedent(agent_module))
    program = (f'import sys; sys.modules[{blocked!r}] = None\n'
               'from microagent.cli.main import main\n'
               'from microagent.cli.marun import main as marun\n'
               f'sys.exit((marun if {argv[0]!r} == "marun" else main)({argv[1:]!r}))\n')
    done = subprocess.run([sys.executable, '-c', program], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={'PYTHONPATH': f'{ROOT}:{tmp_path}', 'PATH': '/usr/bin:/bin'})
    assert done.returncode != 0, done.stdout + done.stderr
    return done.stdout + done.stderr


BUS = "BUS = {{'default': {{'backend': {path!r}, 'dsn': {dsn!r}}}}}\n"
BROKER = "BROKER = {{'default': {{'backend': {path!r}, 'dsn': {dsn!r}}}}}\n"
AGENT = "AGENT = {'a': {'backend': 'microagent.MicroAgent'}}\n"


@pytest.mark.parametrize(('blocked', 'settings', 'extra'), [
    ('redis', BUS.format(path='microagent.tools.redis.RedisSignalBus', dsn='redis://localhost'), 'redis'),
    ('redis', BROKER.format(path='microagent.backends.redis.RedisBroker', dsn='redis://localhost'), 'redis'),
    ('aiormq', BROKER.format(path='microagent.tools.amqp.AMQPBroker', dsn='amqp://localhost'), 'amqp'),
    ('nats', BUS.format(path='microagent.backends.nats.NATSSignalBus', dsn='nats://localhost'), 'nats'),
    ('redis', "BUS = {'default': {'dsn': 'redis://localhost'}}\n", 'redis'),  # the class from the scheme
    ('prometheus_client', "MIDDLEWARES = ['microagent.ops.metrics.PrometheusMiddleware']\n", 'prometheus'),
    ('opentelemetry', "MIDDLEWARES = ['microagent.ops.tracing.TracingMiddleware']\n", 'otel'),
], ids=['redis-tools-path', 'redis-backends-path', 'amqp', 'nats', 'redis-dsn', 'prometheus', 'otel'])
def test_marun_settings_name_the_extra(tmp_path: Path, blocked: str, settings: str, extra: str) -> None:
    output = _run(tmp_path, blocked, ['marun', 'extras_settings'], settings + AGENT)
    assert output.startswith('marun: error: extras_settings')
    assert f"pip install 'microagent[{extra}]'" in output


def test_an_agent_with_pydantic_models_names_the_pydantic_extra(tmp_path: Path) -> None:
    agent = """\
        import pydantic
        from microagent import MicroAgent

        class Mail(pydantic.BaseModel):
            to: str

        class Mailer(MicroAgent): ...
        """
    output = _run(tmp_path, 'pydantic', ['marun', 'extras_settings'],
                  "AGENT = {'m': {'backend': 'extras_agents.Mailer'}}\n", agent)
    assert "AGENT['m']: cannot import backend 'extras_agents.Mailer'" in output
    assert "pip install 'microagent[pydantic]'" in output
    output = _run(tmp_path, 'pydantic', ['microagent', 'schema', 'extras_agents:Mailer'])
    assert "pip install 'microagent[pydantic]'" in output


def test_backend_option_names_the_extra(tmp_path: Path) -> None:
    output = _run(tmp_path, 'redis', ['microagent', 'dead-letters', 'list', 'q', '--broker', 'redis://localhost',
                                      '--backend', 'microagent.tools.redis.RedisBroker'])
    assert "--backend: cannot import backend 'microagent.tools.redis.RedisBroker'" in output
    assert "pip install 'microagent[redis]'" in output


def test_a_module_no_extra_installs_gets_no_install_hint(tmp_path: Path) -> None:
    output = _run(tmp_path, 'redis', ['marun', 'extras_settings'],
                  BUS.format(path='microagent.tools.redys.RedisSignalBus', dsn='redis://localhost') + AGENT)
    assert "cannot import backend 'microagent.tools.redys.RedisSignalBus'" in output
    assert 'pip install' not in output


def test_the_extras_come_from_the_registry_and_the_optional_dependencies() -> None:
    names = ('redis.asyncio', 'hiredis', 'aiormq', 'pamqp.commands', 'nats.js', 'prometheus_client',
             'opentelemetry.trace', 'pydantic', 'msgspec', 'redys', None)
    assert [extra_for(name) for name in names] == [
        'redis', 'redis', 'amqp', 'amqp', 'nats', 'prometheus', 'otel', 'pydantic', None, None, None]


def test_every_extra_of_the_distribution_is_named_for_its_modules() -> None:
    declared = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['optional-dependencies']
    named = {backend.extra for backend in all_backends() if backend.extra} | set(OTHER_EXTRAS.values())
    assert set(declared) - {'dev'} == named
