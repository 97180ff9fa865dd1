"""mypy --strict accepts the typed API as DESIGN.md writes it and rejects the mistakes it promises to catch.

Each snippet in ``tests/typing/snippets/`` marks the lines mypy must reject with ``# E: <error-code>``; every
other line must pass. One mypy run checks every snippet (they are excluded from the project's own run).
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = sorted((ROOT / 'tests' / 'typing' / 'snippets').glob('*.py'))
EXPECTED = re.compile(r'#\s*E:\s*([a-z-]+)')
ERROR = re.compile(r'^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*?)\s+\[(?P<code>[a-z-]+)\]$')

Found = dict[str, set[tuple[int, str]]]


def expected_errors(path: Path) -> set[tuple[int, str]]:
    """The (line, error code) pairs a snippet marks with ``# E: code``."""
    return {(number, match.group(1))
            for number, line in enumerate(path.read_text().splitlines(), start=1)
            if (match := EXPECTED.search(line))}


@pytest.fixture(scope='module')
def mypy_errors() -> tuple[Found, str]:
    """Run mypy once over every snippet; errors by snippet file name, and the full report."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # mypy.ini paths and the `schemas` package are relative to the repository
        stdout, stderr, status = api.run(['--config-file', 'mypy.ini', '--no-error-summary', '--show-error-codes',
                                          '--no-pretty', *(str(path.relative_to(ROOT)) for path in SNIPPETS)])
    assert status in (0, 1), f'mypy crashed ({status}):\n{stdout}{stderr}'
    found: Found = defaultdict(set)
    for line in stdout.splitlines():
        if match := ERROR.match(line):
            found[Path(match['path']).name].add((int(match['line']), match['code']))
        elif ': error:' in line:
            pytest.fail(f'unparsed mypy error: {line}')
    return found, stdout


def test_snippets_exist() -> None:
    names = {path.name for path in SNIPPETS}
    assert {'accepted_design.py', 'accepted_legacy.py'} <= names
    assert sum(bool(expected_errors(path)) for path in SNIPPETS) >= 5


@pytest.mark.parametrize('snippet', SNIPPETS, ids=lambda path: path.stem)
def test_mypy_verdict(snippet: Path, mypy_errors: tuple[Found, str]) -> None:
    found, report = mypy_errors
    expected = expected_errors(snippet)
    if snippet.name.startswith('accepted_'):
        assert not expected, 'an accepted snippet marks no errors'
    else:
        assert snippet.name.startswith('rejected_') and expected, 'a rejected snippet marks its errors'
    actual = found.get(snippet.name, set())
    missing = sorted(expected - actual)
    unexpected = sorted(actual - expected)
    lines = [line for line in report.splitlines() if line.startswith(f'tests/typing/snippets/{snippet.name}:')]
    assert not missing and not unexpected, (
        f'mypy no longer rejects (line, code) {missing}; rejects unexpectedly {unexpected}\n' + '\n'.join(lines))
