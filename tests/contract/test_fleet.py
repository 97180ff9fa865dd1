"""The fleet tools on the demo fleet, the reference schemas and a fleet with planted problems:
``microagent schema`` targets, the fleet AsyncAPI document, ``microagent check``."""
from __future__ import annotations

import json
from typing import Any

import pytest

from microagent.cli.main import main
from microagent.cli.targets import load_fleet
from tests.contract.test_asyncapi import Validate
from tests.contract.test_asyncapi import validate as validate  # the parser fixture


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_settings_module_is_the_whole_fleet_with_its_servers() -> None:
    fleet = load_fleet(['examples.settings_redis'])
    assert [agent.name for agent in fleet.agents] == ['users', 'comments', 'mailer', 'push', 'billing']
    assert all(dsn.startswith('redis://') for dsn in fleet.servers().values())


def test_every_target_kind_loads_and_a_bad_one_is_named() -> None:
    fleet = load_fleet(['examples.users:UserAgent', 'schemas:user_created', 'schemas'])
    assert [agent.name for agent in fleet.agents] == ['UserAgent']
    assert 'user_created' in [item.name for item in fleet.declarations]
    for target, reason in [('json', 'neither a settings module'), ('schemas:Mail', 'neither an agent'),
                           ('nowhere_at_all', 'cannot import'), ('schemas:nothing', 'has no attribute')]:
        with pytest.raises(ValueError, match=reason) as caught:
            load_fleet([target])
        assert repr(target) in str(caught.value)


def test_schema_of_a_declaration(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, 'schema', 'schemas:comments_count')
    info = json.loads(out)
    assert code == 0 and info['kind'] == 'signal' and info['answer']['type'] == 'integer'


def test_fleet_asyncapi_has_sends_servers_and_is_valid(capsys: pytest.CaptureFixture[str],
                                                       validate: Validate) -> None:
    code, out, _ = run(capsys, 'schema', 'examples.settings_redis', '--asyncapi')
    doc: dict[str, Any] = json.loads(out)
    assert code == 0
    actions = [op['action'] for op in doc['operations'].values()]
    assert actions.count('send') == 4 and actions.count('receive') == 6
    assert [server['protocol'] for server in doc['servers'].values()] == ['redis']
    code, out, _ = run(capsys, 'schema', 'schemas', '--asyncapi')  # declarations only: channels, no operation
    alone = json.loads(out)
    assert code == 0 and 'signal.user_deleted' in alone['channels'] and alone['operations'] == {}
    assert [result['valid'] for result in validate(doc, alone)] == [True, True]


def test_check_passes_on_the_demo_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, 'check', 'examples.settings_memory', '--strict')
    assert code == 0, out
    assert out.strip() == '5 agents checked: 0 errors, 0 warnings'


def test_check_names_each_planted_problem(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, 'check', 'tests.fleet_planted', '--format', 'json')
    report = json.loads(out)
    assert code == 1 and report['errors'] == 4 and report['warnings'] == 1
    found = {(p['level'], p['code'], p['name']) for p in report['problems']}
    assert found == {('error', 'nobody-sends', 'planted_orphan'), ('error', 'nobody-sends', 'planted_work'),
                     ('error', 'model-mismatch', 'planted_typed'),
                     ('error', 'rpc-without-answer-type', 'planted_lookup'),
                     ('warning', 'nobody-receives', 'planted_unheard')}
    code, text, _ = run(capsys, 'check', 'tests.fleet_planted')
    assert code == 1
    assert "error: [model-mismatch] receiver: Receiver.on_typed takes Refund but signal 'planted_typed'" in text
    assert text.splitlines()[-1] == '2 agents checked: 4 errors, 1 warnings'


def test_check_warnings_fail_only_when_strict(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, 'check', 'tests.fleet_planted:Sender')[0] == 0  # sends nobody receives: warnings
    assert run(capsys, 'check', 'tests.fleet_planted:Sender', '--strict')[0] == 1
    code, _, err = run(capsys, 'check', 'no_such_settings')
    assert code == 2 and "'no_such_settings'" in err


def test_check_names_one_name_with_two_contracts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, 'check', 'tests.fleet_conflict', '--format', 'json')
    report = json.loads(out)
    assert code == 1 and report['errors'] == 1
    [problem] = report['problems']
    assert problem['code'] == 'two-contracts' and "signal 'planted_orphan'" in problem['message']
    assert (problem['kind'], problem['name']) == ('signal', 'planted_orphan')
    # both modules and both contracts named, and no "0 agents checked" as if nothing were wrong
    assert "declared in tests.fleet_planted with ('tests.fleet_planted.Order'" in problem['message']
    assert "again in tests.fleet_conflict with ('tests.fleet_planted.Refund'" in problem['message']
    code, out, _ = run(capsys, 'check', 'tests.fleet_conflict')
    assert code == 1 and '0 agents checked' not in out
    assert out.splitlines()[-1] == 'tests.fleet_conflict: not checked, its declarations cannot be loaded: 1 errors'
