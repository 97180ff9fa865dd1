"""Running ``marun`` and friends as real processes in tests, and seeing inside them through files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DEADLINE = 30.0  # seconds; only reached when something is broken


def command(name: str) -> list[str]:
    """The installed console script next to this interpreter, as a user runs it."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module = {'marun': 'microagent.cli.marun', 'microagent': 'microagent.cli.main'}[name]
    return [sys.executable, '-c', f'import sys; from {module} import main; sys.exit(main())']


class Run:
    """One started command; its output goes to a file, so a chatty process never blocks on a pipe."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str], own_group: bool = False,
                 cwd: Path | None = None) -> None:
        self.workdir = workdir
        self.log_path = workdir / 'output.log'
        self._log = self.log_path.open('wb')
        self.proc = subprocess.Popen(args, cwd=cwd or ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=own_group)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors='replace')

    def file(self, name: str) -> Path:
        return self.workdir / name

    def wait_for(self, what: str, check: Callable[[], bool], *, needs_process: bool = True) -> None:
        """Poll ``check`` (another process's side effect: nothing to await) until it holds."""
        deadline = time.monotonic() + DEADLINE
        while not check():
            if needs_process and self.proc.poll() is not None and not check():
                raise AssertionError(f'{what}: the process exited with {self.proc.returncode}\n{self.output}')
            if time.monotonic() > deadline:
                raise AssertionError(f'{what}: not within {DEADLINE}s\n{self.output}')
            time.sleep(0.02)

    def wait_file(self, name: str, *, needs_process: bool = True) -> str:
        path = self.file(name)
        self.wait_for(f'{name} to appear', lambda: path.exists() and path.stat().st_size > 0,
                      needs_process=needs_process)
        return path.read_text()

    def pid_of(self, agent: str) -> int:
        return int(self.wait_file(f'{agent}.started'))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        """Signal every process of the group this one leads (started with ``own_group=True``), as a
        terminal's Ctrl-C or GNU ``timeout`` do."""
        os.killpg(self.proc.pid, signum)

    def wait(self) -> int:
        try:
            return self.proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f'the process did not exit within {DEADLINE}s\n{self.output}') from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f'/proc/{pid}/stat').read_text().split(')')[-1].split()[0] != 'Z'
    except OSError:
        return True


def kill_agent_process(pid: int) -> None:
    """Kill a leftover agent process of a failed test; a pid reused by anything else is left alone."""
    try:
        if b'microagent.cli.marun' in Path(f'/proc/{pid}/cmdline').read_bytes():
            os.kill(pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass


Starter = Callable[..., Run]


@contextmanager
def starter(tmp_path: Path) -> Iterator[Starter]:
    """``start('marun', 'tests.launcher_agents.group', env={...})``; everything it started, agents
    included (their pids are in ``*.started`` files), is killed at the end. ``own_group``: in a new
    session and process group of its own; ``wrap``: run under that command (``['timeout', ...]``);
    ``cwd``: the directory it runs in (default: the repository)."""
    runs: list[Run] = []

    def run(name: str, *args: str, env: dict[str, str] | None = None, module: str | None = None,
            own_group: bool = False, wrap: Sequence[str] = (), cwd: Path | None = None) -> Run:
        workdir = tmp_path / f'run{len(runs)}'
        workdir.mkdir()
        environ = {**os.environ, 'LAUNCHER_TEST_DIR': str(workdir), **(env or {})}
        argv = [sys.executable, '-m', module] if module else command(name)
        runs.append(Run([*wrap, *argv, *args], workdir, environ, own_group, cwd))
        return runs[-1]

    try:
        yield run
    finally:
        _clean(runs)


def _clean(runs: list[Run]) -> None:
    for item in runs:
        item.close()
        for started in item.workdir.glob('*.started'):
            text = started.read_text()
            if text.isdigit() and int(text) != os.getpid():
                kill_agent_process(int(text))
