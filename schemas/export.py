"""Regenerate ``schemas/json/`` from the code: ``python -m schemas.export`` (``make schemas``).

Other teams and non-Python services read these files, so they are checked in, and the drift check
(``--check``, and a test) compares them with the code through ``microagent.contract.compatibility``: a change of the
code that old readers and writers survive (BACKWARD by default) is reported and passes, a breaking
one fails naming the field.

* ``signals/<name>.json``, ``queues/<name>.json``: the JSON Schema (draft 2020-12) of each payload;
* ``signals/<name>.answer.json``: the answer of an RPC signal;
* ``asyncapi.json``: the AsyncAPI 3.0 document of the demo agents in ``examples/``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import schemas
from microagent import Queue, Signal
from microagent.cli.schema import dumps, load_agent
from microagent.cli.schema_diff import LEVELS, render
from microagent.contract.asyncapi import asyncapi
from microagent.contract.compatibility import Declaration, Level, diff
from microagent.contract.exports import from_files, read_dir
from microagent.errors import InvalidArgument

JSON_DIR = Path(__file__).resolve().parent / 'json'
DEMO_AGENTS = (
    'examples.users:UserAgent',
    'examples.comments:CommentAgent',
    'examples.mailer:MailerAgent',
    'examples.push:PushAgent',
)
COMMAND = 'python -m schemas.export'
REGENERATE = f'`make schemas` (or `{COMMAND}`)'


def exported() -> dict[str, str]:
    """Every file of ``schemas/json/`` as the code exports it now: relative path -> text."""
    files: dict[str, str] = {}
    for value in vars(schemas).values():
        if isinstance(value, Signal):
            files[f'signals/{value.name}.json'] = dumps(value.codec.schema)
            if value.answer_codec is not None:
                files[f'signals/{value.name}.answer.json'] = dumps(value.answer_codec.schema)
        elif isinstance(value, Queue):
            files[f'queues/{value.name}.json'] = dumps(value.codec.schema)
    agents = [load_agent(target) for target in DEMO_AGENTS]
    files['asyncapi.json'] = dumps(asyncapi(
        *agents, title='microagent demo', version='1.0.0',
        description='The demo agents of examples/ and the reference schema package schemas/.'))
    return dict(sorted(files.items()))


def on_disk(root: Path = JSON_DIR) -> dict[str, str]:
    """The checked-in files: relative path -> text."""
    return read_dir(root)


def differences(root: Path = JSON_DIR) -> list[str]:
    """The relative paths whose checked-in text is missing, stale or no longer exported."""
    return _stale(exported(), on_disk(root))


def _stale(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    return sorted(path for path in expected.keys() | actual.keys() if expected.get(path) != actual.get(path))


def check(root: Path = JSON_DIR, require: Level = Level.BACKWARD) -> tuple[bool, str]:
    """The drift check: (passes, what to tell). Checked-in files that match pass silently; a change of
    the code that meets ``require`` passes with its report and a reminder to regenerate; anything
    else fails, naming the declaration and field."""
    expected, actual = exported(), on_disk(root)
    stale = _stale(expected, actual)
    if not stale:
        return True, ''
    report = diff(_declarations(actual), _declarations(expected))
    lines = [f'schemas/json/{path} differs from the code' for path in stale]
    if report.changed:
        lines.append(render(report, require).rstrip())
    ok = report.meets(require)
    if ok:
        lines.append(f'the code is {require.value}-compatible with schemas/json: run {REGENERATE} to update it')
    else:
        lines.append(f'the code breaks {require.value} compatibility with schemas/json: readers or writers '
                     f'still on the checked-in contract fail. Revert the change, or make it compatible '
                     f'(a default, an optional field), then run {REGENERATE}')
    return ok, '\n'.join(lines)


def _declarations(files: dict[str, str]) -> list[Declaration]:
    try:
        return from_files(files, 'schemas/json')
    except InvalidArgument:  # nothing exported yet: every declaration is new
        return []


def write(root: Path = JSON_DIR) -> list[str]:
    """Write the exported files and remove those no longer exported; the paths that changed."""
    expected = exported()
    changed = _stale(expected, on_disk(root))
    for path in changed:
        target = root / path
        if path in expected:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(expected[path], encoding='utf-8')
        else:
            target.unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description='Regenerate schemas/json/ from the code.')
    parser.add_argument('--check', action='store_true',
                        help='only compare: exit 1 if the code breaks the checked-in contract')
    parser.add_argument('--require', choices=tuple(LEVELS), default='backward',
                        help='the compatibility --check asks of the code (default: %(default)s)')
    parser.add_argument('--dir', type=Path, default=JSON_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        ok, text = check(args.dir, LEVELS[args.require])
        if text:
            print(text, file=sys.stderr)
        return 0 if ok else 1
    for path in write(args.dir):
        print(f'wrote schemas/json/{path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
