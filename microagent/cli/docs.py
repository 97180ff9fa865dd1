"""``microagent docs SETTINGS -o site/``: write the offline HTML page of a fleet."""
from __future__ import annotations

import sys
from pathlib import Path

from microagent.cli.targets import load_fleet
from microagent.contract.docs_page import render_docs


def docs_command(targets: list[str], output: str) -> int:
    """Write ``OUTPUT/index.html``; exit 2 for a target that cannot be loaded, 1 for a write error."""
    try:
        fleet = load_fleet(targets)
    except ValueError as exc:
        print(f'microagent docs: {exc}', file=sys.stderr)
        return 2
    path = Path(output) / 'index.html'
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_docs(fleet), encoding='utf-8')
    except OSError as exc:
        print(f'microagent docs: cannot write {str(path)!r}: {exc}', file=sys.stderr)
        return 1
    print(f'wrote {path}')
    return 0
