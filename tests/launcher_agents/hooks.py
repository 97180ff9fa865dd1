"""SETUP functions of the launcher tests, and an agent that says whether SETUP ran before it was built."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from microagent import on
from tests.launcher_agents.agents import Recorder

DONE: int | None = None  #: the pid of the process that ran ``setup``


def setup() -> None:
    """Writes ``setup-<pid>`` into the test's directory."""
    global DONE
    DONE = os.getpid()
    Path(os.environ.get('LAUNCHER_TEST_DIR', '.'), f'setup-{DONE}').write_text('ran')


def broken() -> None:
    raise RuntimeError('no collector at localhost:4317')


def needs(endpoint: str) -> None:
    """A SETUP cannot be given arguments."""


class SetUp(Recorder):
    """Writes ``<name>.setup``: ``before`` when its process's SETUP ran before it was built."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.set_up_first = os.getpid() == DONE

    @on('post_start')
    def report(self) -> None:
        self.mark('setup', 'before' if self.set_up_first else 'not before')
