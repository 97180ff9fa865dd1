"""A user's mistake on the command line or in settings is exit 2 with one line naming it (password
hidden), never a traceback and never exit 1 (which means "not what you asked", e.g. no dead letters)
or 3 (the server did not answer)."""
from __future__ import annotations

from typing import Any

import pytest

from microagent.cli.main import main
from microagent.cli.marun import main as marun
from tests.services import REDIS_HOST, REDIS_PORT

MALFORMED = ['redis://h:99999/0', 'redis://:s3cret@h:99999/0', 'redis://[::1', 'redis+cluster:///',
             'redis://h:port/0', 'amqp://guest:s3cret@[::1', 'amqp://h:99999/']


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert 'Traceback' not in err and 's3cret' not in err
    return lines[0]


@pytest.mark.parametrize('dsn', MALFORMED)
def test_dead_letters_with_a_malformed_dsn_is_a_usage_error(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['dead-letters', 'list', 'q', '--broker', dsn, '--timeout', '3']) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith('microagent: error: --broker: the DSN ') and 'is malformed' in line


def test_dead_letters_on_an_unreachable_server_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['dead-letters', 'list', 'q', '--broker', 'redis://127.0.0.1:1/0', '--timeout', '3']) == 3
    assert 'ConnectionError' in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize('command', [
    ['dead-letters', 'list', 'q', '--broker', f'redis://{REDIS_HOST}:{REDIS_PORT}/9'],
    ['publish', 'mailer', '{}', '--broker', f'redis://{REDIS_HOST}:{REDIS_PORT}/9'],
])
@pytest.mark.parametrize('timeout', ['nan', 'inf', '-1', '0', '-inf'])
def test_a_timeout_that_is_not_finite_and_positive_is_a_usage_error(
        command: list[str], timeout: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, f'--timeout={timeout}'])
    assert exit_.value.code == 2
    assert f"argument --timeout: '{timeout}' is not a finite number of seconds > 0" in capsys.readouterr().err


@pytest.mark.parametrize('delay', ['nan', 'inf', '-1'])
def test_publish_refuses_a_delay_that_is_not_finite(delay: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(['publish', 'mailer', '{}', '--broker', 'redis://h/0', f'--delay={delay}'])
    assert exit_.value.code == 2
    assert f"argument --delay: '{delay}' is not a finite number of seconds >= 0" in capsys.readouterr().err


@pytest.mark.parametrize('grace', ['nan', 'inf', '-1'])
def test_marun_refuses_a_grace_that_is_not_finite(grace: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        marun(['some.settings', f'--grace={grace}'])
    assert exit_.value.code == 2
    assert f"argument --grace: '{grace}' is not a finite number of seconds >= 0" in capsys.readouterr().err


@pytest.mark.parametrize('dsn', ['redis://h:99999/0', 'redis://:s3cret@h:99999/0', 'redis://[::1'])
def test_publish_with_a_malformed_dsn_is_a_usage_error(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['publish', 'mailer', '{"to": "a@b.c", "subject": "hi"}', '--module', 'schemas',
                 '--broker', dsn]) == 2
    assert 'is malformed' in _one_line(capsys.readouterr().err)


def test_publish_of_a_payload_nested_too_deeply_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    deep = '[' * 50_000 + ']' * 50_000
    assert main(['publish', 'mailer', deep, '--module', 'schemas', '--broker', 'redis://127.0.0.1:1/0']) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == 'microagent publish: error: PAYLOAD is nested too deeply to decode (RecursionError): flatten it'


@pytest.mark.parametrize('single', [False, True])
@pytest.mark.parametrize(('section', 'dsn', 'expected'), [
    ('BROKER', 'redis://:s3cret@localhost:99999/0', "BROKER['default']: the DSN redis://:***@localhost:99999/0 "
                                                    'is malformed: Port out of range 0-65535'),
    ('BUS', 'redis://[::1', "BUS['default']: the DSN redis://[::1 is malformed: Invalid IPv6 URL"),
    ('BUS', 'redos://localhost/0', "BUS['default']: no backend for the scheme of 'redos://localhost/0'"),
])
def test_marun_with_a_bad_dsn_in_settings_exits_2_with_one_line(
        config_module: Any, capsys: pytest.CaptureFixture[str], single: bool, section: str, dsn: str,
        expected: str) -> None:
    role = section.lower()
    module = config_module(**{section: {'default': {'dsn': dsn}}},
                           AGENT={'users': {'backend': 'microagent.MicroAgent', role: 'default'}})
    assert marun([module, *(['--single-process'] if single else [])]) == 2
    assert expected in _one_line(capsys.readouterr().err)
