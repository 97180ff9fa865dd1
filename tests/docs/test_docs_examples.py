"""Every ```python block of README.md and docs/*.md runs, so the docs cannot drift from the code.

The convention (docs/README.md says it to writers): a block is a complete script, run in a fresh
directory with the worktree on PYTHONPATH, and must exit 0. Marker comments on its first lines change that:

- ``# docs: fragment``: shown only, never run (few of these; the share is bounded below);
- ``# docs: needs redis`` (``amqp``, ``nats``): runs only when that server answers, else skips with the
  reason (fails when MICROAGENT_REQUIRE_SERVICES is set, as every integration test);
- ``# docs: continues``: the previous python block of the page and this one run as one script;
- ``# docs: file PATH``: a file of the example project; written at PATH for every later block of the
  page, and checked here by importing it (any other block names its file in the info string:
  ```json file=stuff.json);
- ``# docs: pytest``: a test module, run by pytest with the microagent plugin; its tests must pass.

A ```text output block right after a python block is what that block prints: stdout must match it.
Shell blocks are not run, but every ``microagent`` subcommand and ``marun`` option they name must exist.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.amqp_support import require_rabbitmq
from tests.services import REDIS_HOST, REDIS_PORT, require_nats, require_service

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
TIMEOUT = 90
MAX_FRAGMENT_SHARE = 0.25

FENCE = re.compile(r'^```([^\n`]*)\n(.*?)^```[ \t]*$', re.M | re.S)
MARKER = re.compile(r'#\s*docs:\s*(.+?)\s*$')
SERVICES: dict[str, Callable[[], None]] = {
    'redis': lambda: require_service('Redis', REDIS_HOST, REDIS_PORT),
    'amqp': require_rabbitmq,
    'nats': require_nats,
}
SHELL = {'sh', 'bash', 'console', 'shell'}


@dataclass
class Block:
    page: str
    line: int
    lang: str
    info: str
    code: str
    markers: list[str] = field(default_factory=list)
    output: str | None = None

    @property
    def id(self) -> str:
        return f'{self.page}:{self.line}'

    @property
    def file(self) -> str | None:
        """Where the block is written for the later blocks of its page: ``# docs: file PATH`` in python,
        ``file=PATH`` in the info string of any other block (```json file=stuff.json)."""
        if self.lang == 'python':
            return self.marked('file') or None
        found = re.search(r'\bfile=(\S+)', self.info)
        return found.group(1) if found else None

    def marked(self, name: str) -> str | None:
        """The argument of a marker (``''`` when it has none), or None when the block lacks it."""
        for marker in self.markers:
            word, _, rest = marker.partition(' ')
            if word == name:
                return rest.strip()
        return None


def parse(page: Path) -> list[Block]:
    text = page.read_text()
    name = page.relative_to(ROOT).as_posix()
    blocks: list[Block] = []
    for match in FENCE.finditer(text):
        info = match.group(1).strip()
        lang = info.split(' ')[0] if info else ''
        line = text.count('\n', 0, match.start()) + 1
        code = match.group(2)
        if lang == 'text' and info.split()[1:] == ['output']:
            assert blocks and blocks[-1].lang == 'python' and blocks[-1].output is None, \
                f'{name}:{line}: an output block must follow a python block'
            blocks[-1].output = code
            continue
        markers = []
        for first in code.splitlines():
            found = MARKER.fullmatch(first.strip())
            if not found:
                break
            markers.append(found.group(1))
        blocks.append(Block(name, line, lang, info, code, markers))
    return blocks


BLOCKS = [block for page in PAGES for block in parse(page)]
PYTHON = [block for block in BLOCKS if block.lang == 'python']
KNOWN = {'fragment', 'needs', 'continues', 'file', 'pytest'}


def chain(block: Block) -> str:
    """The block's script: the blocks it continues, then itself."""
    page = [b for b in PYTHON if b.page == block.page]
    parts = [block.code]
    index = page.index(block)
    while page[index].marked('continues') is not None:
        index -= 1
        assert index >= 0, f'{block.id}: "continues" needs a python block before it'
        parts.insert(0, page[index].code)
    return '\n'.join(parts)


def project_files(block: Block, into: Path) -> None:
    """Write the page's file blocks that come before ``block``."""
    for earlier in BLOCKS:
        if earlier.page != block.page or earlier.line >= block.line:
            continue
        path = earlier.file
        if path:
            target = into / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(earlier.code)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONDONTWRITEBYTECODE': '1'}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)


@pytest.mark.parametrize('block', PYTHON, ids=[block.id for block in PYTHON])
def test_the_python_block_runs(block: Block, tmp_path: Path) -> None:
    unknown = [m for m in block.markers if m.split(' ')[0] not in KNOWN]
    assert not unknown, f'{block.id}: unknown docs markers {unknown}; known: {sorted(KNOWN)}'
    if block.marked('fragment') is not None:
        pytest.skip('a fragment: shown only')
    needs = block.marked('needs')
    for service in (needs or '').split():
        assert service in SERVICES, f'{block.id}: "needs {service}": known services are {sorted(SERVICES)}'
        SERVICES[service]()
    project_files(block, tmp_path)
    path = block.marked('file')
    if path:
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.code)
        assert path.endswith('.py'), f'{block.id}: a file block must be a .py module'
        module = path.removesuffix('.py').removesuffix('/__init__').replace('/', '.')
        done = run([sys.executable, '-c', f'import {module}'], tmp_path)
    elif block.marked('pytest') is not None:
        (tmp_path / 'test_docs_block.py').write_text(chain(block))
        # -p no:microagent: the installed entry point (if any) gives way to the module of this worktree
        done = run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-p', 'no:microagent',
                    '-p', 'microagent.testing.pytest_plugin', 'test_docs_block.py'], tmp_path)
    else:
        (tmp_path / 'docs_block.py').write_text(chain(block))
        done = run([sys.executable, 'docs_block.py'], tmp_path)
    assert done.returncode == 0, f'{block.id} exited {done.returncode}\n{done.stdout}\n{done.stderr}'
    if block.output is not None:
        shown = [line.rstrip() for line in block.output.strip().splitlines()]
        printed = [line.rstrip() for line in done.stdout.strip().splitlines()]
        assert printed == shown, f'{block.id}: the page shows other output than the block prints'


def test_few_blocks_are_fragments() -> None:
    fragments = [block.id for block in PYTHON if block.marked('fragment') is not None]
    assert PYTHON, 'no python block found in the docs'
    assert len(fragments) <= MAX_FRAGMENT_SHARE * len(PYTHON), \
        f'{len(fragments)} of {len(PYTHON)} python blocks are fragments: {fragments}; make them runnable'


def test_every_page_is_listed_in_the_index() -> None:
    index = (ROOT / 'docs' / 'README.md').read_text()
    readme = (ROOT / 'README.md').read_text()
    for page in sorted((ROOT / 'docs').glob('*.md')):
        if page.name != 'README.md':
            assert f']({page.name})' in index, f'docs/README.md does not link {page.name}'
            assert f'](docs/{page.name})' in readme, f'README.md does not link docs/{page.name}'


def _commands() -> tuple[dict[str, set[str]], set[str]]:
    from microagent.cli.main import build_parser
    from microagent.cli.marun import build_parser as marun_parser

    def choices(parser: object) -> dict[str, object]:
        for action in getattr(parser, '_actions', []):
            if action.choices and isinstance(action.choices, dict):
                return dict(action.choices)
        return {}

    commands = {name: set(choices(sub)) for name, sub in choices(build_parser()).items()}
    commands['schema'] = set()  # its arguments are targets, or diff
    options = {option for action in marun_parser()._actions for option in action.option_strings}
    return commands, options


SHELL_LINES = [(block, line) for block in BLOCKS if block.lang in SHELL for line in block.code.splitlines()
               if re.match(r'(\$ )?(microagent|marun)\b', line)]


@pytest.mark.parametrize(('block', 'line'), SHELL_LINES, ids=[f'{b.id}:{line[:40]}' for b, line in SHELL_LINES])
def test_the_shell_commands_exist(block: Block, line: str) -> None:
    commands, marun_options = _commands()
    command = line.removeprefix('$ ').split(' #')[0]
    words = command.split()
    if words[0] == 'marun' or words[:2] == ['microagent', 'run']:
        for option in re.findall(r'(?<![\w-])--[a-z][\w-]*', command):
            assert option in marun_options, f'{block.id}: marun has no option {option}'
        return
    assert words[1] in commands, f'{block.id}: microagent has no command {words[1]!r}'
    actions = commands[words[1]]
    if actions and len(words) > 2 and not words[2].startswith('-'):
        assert words[2] in actions, f'{block.id}: microagent {words[1]} has no action {words[2]!r}'
