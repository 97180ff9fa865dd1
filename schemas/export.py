"""Regenerate ``schemas/json/`` from the code: ``python -m schemas.export`` (``--check`` only compares).

Other teams and non-Python services read these files, so they are checked in and a test fails when
they drift from the declarations:

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
from microagent.schema import asyncapi, dumps, load_agent

JSON_DIR = Path(__file__).resolve().parent / 'json'
DEMO_AGENTS = (
    'examples.users:UserAgent',
    'examples.comments:CommentAgent',
    'examples.mailer:MailerAgent',
    'examples.push:PushAgent',
)
COMMAND = 'python -m schemas.export'


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
    return {path.relative_to(root).as_posix(): path.read_text(encoding='utf-8')
            for path in sorted(root.rglob('*.json'))}


def differences(root: Path = JSON_DIR) -> list[str]:
    """The relative paths whose checked-in text is missing, stale or no longer exported."""
    expected, actual = exported(), on_disk(root)
    return sorted(path for path in expected.keys() | actual.keys() if expected.get(path) != actual.get(path))


def write(root: Path = JSON_DIR) -> list[str]:
    """Write the exported files and remove those no longer exported; the paths that changed."""
    changed = differences(root)
    expected = exported()
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
    parser.add_argument('--check', action='store_true', help='only report files that differ; exit 1 if any')
    args = parser.parse_args(argv)
    if args.check:
        stale = differences()
        for path in stale:
            print(f'schemas/json/{path} differs from the code', file=sys.stderr)
        if stale:
            print(f'run `{COMMAND}` to regenerate', file=sys.stderr)
        return 1 if stale else 0
    for path in write():
        print(f'wrote schemas/json/{path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
