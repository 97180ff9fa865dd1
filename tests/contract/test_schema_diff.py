"""``microagent schema diff`` on the reference ``schemas/json`` and the demo fleet's AsyncAPI, from a
directory, an AsyncAPI file and a git ref; and the drift check of this repository built on it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from microagent.cli.main import main
from microagent.cli.schema import schema_command
from microagent.contract.compatibility import Level
from schemas import export
from tests.launcher_agents.support import command

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    """A copy of the checked-in export, to plant changes in."""
    target = tmp_path / 'json'
    shutil.copytree(export.JSON_DIR, target)
    return target


def plant(root: Path, name: str, edit: Edit) -> None:
    path = root / name
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document, indent=2))


def add_required_age(schema: dict[str, Any]) -> None:
    schema['properties']['age'] = {'type': 'integer'}
    schema['required'].append('age')


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(['schema', 'diff', *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_same_export_is_full(reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(export.JSON_DIR), str(reference), '--require', 'full')

    assert code == 0
    assert out.splitlines()[-2:] == ['no change: FULL', 'required FULL: met']
    assert 'unchanged: queue mailer, queue push_android, queue push_ios, signal comment_posted' in out


def test_a_breaking_change_names_the_field_and_fails_the_required_level(
        reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plant(reference, 'signals/user_created.json', add_required_age)
    plant(reference, 'queues/mailer.json', lambda s: s['properties'].update(cc={'type': 'string', 'default': ''}))

    code, out, _ = run(capsys, str(export.JSON_DIR), str(reference), '--require', 'backward')

    assert code == 1
    assert 'signal user_created: FORWARD\n  payload.age  FORWARD   required field added (no default): ' \
           'new consumers may reject messages of old producers\n' in out
    assert 'queue mailer: FULL\n  payload.cc  FULL      field added with default ""\n' in out
    assert out.splitlines()[-1] == 'required BACKWARD: NOT met by signal user_created (payload.age)'
    assert run(capsys, str(export.JSON_DIR), str(reference), '--require', 'forward')[0] == 0
    code, default, _ = run(capsys, str(export.JSON_DIR), str(reference))
    assert (code, default) == (1, out)  # BACKWARD is required unless told otherwise
    code, report, _ = run(capsys, str(export.JSON_DIR), str(reference), '--require', 'none')
    assert code == 0  # only a report: the same, without the verdict
    assert report.splitlines() == out.splitlines()[:-1]


def test_a_compatible_change_meets_full(reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plant(reference, 'signals/user_created.json', lambda s: s['properties'].update(
        locale={'anyOf': [{'type': 'string'}, {'type': 'null'}], 'default': None}))

    code, out, _ = run(capsys, str(export.JSON_DIR), str(reference), '--require', 'full')

    assert code == 0
    assert 'payload.locale  FULL      field added with default null' in out


def test_rpc_answers_count_from_the_receivers_side(reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plant(reference, 'signals/comments_count.answer.json', lambda s: s.update(type='number'))

    code, out, _ = run(capsys, str(export.JSON_DIR), str(reference), '--require', 'backward', '--format', 'json')

    assert code == 1
    report = json.loads(out)
    assert (report['level'], report['required'], report['ok']) == ('FORWARD', 'BACKWARD', False)
    [signal] = report['declarations']
    assert signal == {'kind': 'signal', 'name': 'comments_count', 'status': 'changed', 'level': 'FORWARD',
                      'changes': [{'field': 'answer', 'part': 'answer', 'path': '', 'level': 'FORWARD',
                                   'change': 'type widened: integer -> number',
                                   'reason': 'old callers may reject the answers of new receivers'}]}


def test_declarations_added_and_removed(reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (reference / 'signals' / 'user_deleted.json').rename(reference / 'signals' / 'user_gone.json')

    code, out, _ = run(capsys, str(export.JSON_DIR), str(reference), '--require', 'backward')

    assert code == 1
    assert 'signal user_gone: FULL (added)' in out
    assert 'signal user_deleted: FORWARD (removed: old producers may still send it' in out


def test_an_asyncapi_file_of_the_demo_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = tmp_path / 'old.json', tmp_path / 'new.json'
    assert schema_command(['examples.settings_memory'], asyncapi=True, output=str(old)) == 0
    document = json.loads(old.read_text())
    add_required_age(document['components']['schemas']['UserCreated'])
    new.write_text(json.dumps(document))

    assert run(capsys, str(old), str(old), '--require', 'full')[0] == 0
    code, out, _ = run(capsys, str(old), str(new), '--require', 'backward')
    assert code == 1
    assert 'signal user_created: FORWARD\n  payload.age' in out
    assert 'signal comments_count' in out.splitlines()[-3]  # unchanged, answer included


def test_an_asyncapi_file_against_the_directory(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(export.JSON_DIR / 'asyncapi.json'), str(export.JSON_DIR), '--require', 'full')

    assert code == 0  # the demo's document holds fewer declarations: the others are added
    assert 'signal user_deleted: FULL (added)' in out
    assert 'signal comments_count' in out.splitlines()[-3]


def git(repo: Path, *args: str) -> None:
    subprocess.run(['git', '-c', 'user.email=t@example.com', '-c', 'user.name=t', *args], cwd=repo,
                   check=True, capture_output=True)


def test_a_git_ref(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / 'repo'
    shutil.copytree(export.JSON_DIR, repo / 'schemas' / 'json')
    git(repo, 'init', '-q')
    git(repo, 'add', '.')
    git(repo, 'commit', '-qm', 'v1')
    plant(repo / 'schemas' / 'json', 'signals/user_created.json', add_required_age)
    monkeypatch.chdir(repo / 'schemas')  # PATH counts from the repository's root

    code, out, _ = run(capsys, 'git:HEAD', 'json', '--require', 'backward')
    assert code == 1 and 'payload.age' in out
    git(repo, 'commit', '-qam', 'v2')
    assert run(capsys, 'git:HEAD~1:schemas/json', 'git:HEAD', '--require', 'backward')[0] == 1
    assert run(capsys, 'git:HEAD~1:schemas/json/asyncapi.json', 'json/asyncapi.json', '--require', 'full')[0] == 0


@pytest.mark.parametrize(('source', 'error'), [
    ('missing_dir', "'missing_dir': no such file or directory"),
    ('git:no_such_ref', "'git:no_such_ref': git ls-tree:"),
    ('git:HEAD:no/such/path', "no JSON file under 'no/such/path' at 'HEAD'"),
    ('broken.json', "broken.json: not JSON"),
    ('other.json', 'other.json: not an AsyncAPI 3 document'),
    ('empty', "empty: no signals/*.json, queues/*.json or asyncapi.json"),
])
def test_unreadable_sources_exit_2(source: str, error: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / 'broken.json').write_text('{')
    (tmp_path / 'other.json').write_text('{"openapi": "3.1.0"}')
    (tmp_path / 'empty').mkdir()
    git(tmp_path, 'init', '-q')
    git(tmp_path, 'commit', '-q', '--allow-empty', '-m', 'empty')
    monkeypatch.chdir(tmp_path)

    code, out, err = run(capsys, source, str(export.JSON_DIR))

    assert (code, out) == (2, '')
    assert err.startswith('microagent schema diff: ') and error in err


def test_an_unknown_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(['schema', 'diff', 'a', 'b', '--require', 'transitive'])
    assert exit_.value.code == 2
    assert "invalid choice: 'transitive'" in capsys.readouterr().err


# the drift check of this repository (schemas/export.py --check and tests/contract/test_schema.py)

def test_drift_check_passes_an_up_to_date_export() -> None:
    assert export.check() == (True, '')
    assert export.main(['--check']) == 0


def test_drift_check_passes_a_compatible_change_and_says_to_regenerate(
        reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the checked-in file lacks `name`: the code added a field with a default
    plant(reference, 'signals/user_created.json', lambda s: s['properties'].pop('name'))

    ok, text = export.check(reference)

    assert ok
    assert text.splitlines()[0] == 'schemas/json/signals/user_created.json differs from the code'
    assert 'payload.name  FULL      field added with default ""' in text
    assert text.splitlines()[-1] == ('the code is BACKWARD-compatible with schemas/json: run `make schemas` '
                                     '(or `python -m schemas.export`) to update it')
    assert export.main(['--check', '--dir', str(reference)]) == 0
    assert 'run `make schemas`' in capsys.readouterr().err
    assert export.check(reference, Level.FULL)[0]


def test_drift_check_fails_a_breaking_change_naming_the_field(
        reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the checked-in file lacks `email`: the code added a required field, old producers' signals are refused
    def drop_email(schema: dict[str, Any]) -> None:
        schema['properties'].pop('email')
        schema['required'].remove('email')
    plant(reference, 'signals/user_created.json', drop_email)

    ok, text = export.check(reference)

    assert not ok
    assert 'payload.email  FORWARD   required field added (no default)' in text
    assert 'required BACKWARD: NOT met by signal user_created (payload.email)' in text
    assert export.main(['--check', '--dir', str(reference)]) == 1
    assert 'breaks BACKWARD compatibility' in capsys.readouterr().err
    assert export.main(['--check', '--dir', str(reference), '--require', 'forward']) == 0


def test_drift_check_of_an_empty_export_passes(tmp_path: Path) -> None:
    ok, text = export.check(tmp_path)

    assert ok and 'signal user_created: FULL (added)' in text


DECLARATIONS = '''
import msgspec
from microagent import Signal

class Query(msgspec.Struct):
    user_id: int

count = Signal('answer_count_{unique}', Query, returns={answer})
'''


def export_declarations(root: Path, unique: str, answer: str, *args: str) -> dict[str, Any]:
    """``microagent schema MODULE --asyncapi`` of a module of declarations, as a user runs it."""
    root.mkdir()
    (root / f'decl_{unique}.py').write_text(DECLARATIONS.format(unique=unique, answer=answer))
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(root), os.environ.get('PYTHONPATH')]))}
    done = subprocess.run([*command('microagent'), 'schema', f'decl_{unique}', '--asyncapi',
                           '-o', str(root / 'asyncapi.json'), *args], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads((root / 'asyncapi.json').read_text())
    return document


def test_an_rpc_answer_change_of_a_declarations_module_is_breaking(tmp_path: Path, unique: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    old = export_declarations(tmp_path / 'old', unique, 'int')
    export_declarations(tmp_path / 'new', unique, 'str', '--title', 'Counting', '--version', '2.0.0')
    answers = old['components']['messages'][f'answer_count_{unique}.answer']['payload']
    assert answers['additionalProperties'] == {'type': 'integer'}  # the export carries the answer

    code, out, _ = run(capsys, str(tmp_path / 'old'), str(tmp_path / 'new'))

    assert code == 1
    assert f'signal answer_count_{unique}: BREAKING\n  answer  BREAKING  type changed: integer -> string' in out
    assert out.splitlines()[-1] == f'required BACKWARD: NOT met by signal answer_count_{unique} (answer)'
    new = json.loads((tmp_path / 'new' / 'asyncapi.json').read_text())
    assert (old['info']['title'], old['info']['version']) == (f'answer_count_{unique}', '1.0.0')
    assert (new['info']['title'], new['info']['version']) == ('Counting', '2.0.0')


def test_an_rpc_signal_exported_without_its_answer_is_never_unchanged(tmp_path: Path, unique: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    document = export_declarations(tmp_path / 'old', unique, 'int')
    # as an export of an older microagent wrote it: the signal says rpc, but no answer schema
    del document['channels']['signal.response']
    del document['components']['messages'][f'answer_count_{unique}.answer']
    stripped = tmp_path / 'stripped.json'
    stripped.write_text(json.dumps(document))

    code, out, _ = run(capsys, str(stripped), str(stripped))

    assert code == 1
    assert 'no change' not in out
    assert f'signal answer_count_{unique}: BREAKING\n  answer  BREAKING  answer schema missing from OLD and NEW ' \
           '(an RPC signal): cannot be compared, export it again' in out
    code, out, _ = run(capsys, str(stripped), str(tmp_path / 'old'), '--require', 'none')
    assert code == 0 and 'answer schema missing from OLD (an RPC signal)' in out
