"""``marun --reload``: while developing, run the group again whenever a source file changes.

The reloader is a small parent process. It runs the group as a child ``marun`` with the same
options (without ``--reload``), watches the ``*.py`` files under the current directory (the project
directory, which ``marun`` puts on ``sys.path``) and under each ``--reload-dir``, and on a change
logs which files changed, stops the child with SIGTERM (the graceful stop of ``marun``: ``pre_stop``
hooks, in-flight handlers get ``--grace`` seconds), waits for it and starts a new one, which imports
the changed code afresh. Virtualenvs, caches and VCS folders are not watched (``IGNORED_DIRS``).

SIGINT or SIGTERM to the reloader is passed on to the child, then the reloader exits with the
child's code (a second one is passed on too: the child then kills its agents, as ``marun`` does).
A child that exits by itself (a crash, a syntax error in the change) is logged, and the reloader
waits for the next change to start it again: fix the file and save.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from microagent.cli.config import ConfigError

__all__ = ['IGNORED_DIRS', 'child_arguments', 'run_reloading', 'source_filter']

log = logging.getLogger('microagent.launcher')

#: folders never watched, at any depth: virtualenvs, caches, VCS and tool folders
IGNORED_DIRS = ('__pycache__', '.git', '.hg', '.svn', '.tox', '.nox', '.venv', 'venv', '.idea', '.vscode',
                'node_modules', '.mypy_cache', '.pytest_cache', '.ruff_cache', '.hypothesis', '.eggs',
                'site-packages')
#: changed files named in the log line; the others are counted
SHOWN = 5
#: seconds a stopping child may take beyond its grace before the reloader kills it
KILL_MARGIN = 15.0


def source_filter() -> Callable[[Any, str], bool]:
    """What the reloader watches, as a watchfiles filter: ``*.py`` files outside ``IGNORED_DIRS``."""
    from watchfiles import PythonFilter

    class SourceFilter(PythonFilter):
        ignore_dirs = IGNORED_DIRS

    return SourceFilter()


def child_arguments(args: argparse.Namespace) -> list[str]:
    """The ``marun`` arguments of the child: the parsed options, without the reloader's own. The
    token of ``--http-token-file`` is already in the environment, which the child inherits."""
    argv = [*args.modules, '--grace', str(args.grace), '--log-level', args.log_level,
            '--log-format', args.log_format, *(f'--replicas={item}' for item in args.replicas)]
    if args.single_process:
        argv.append('--single-process')
    if args.http is not None:
        argv += ['--http', args.http]
    return argv


def run_reloading(args: argparse.Namespace) -> int:
    """Run the group of ``args`` in a child ``marun``, again after every change; returns the exit code
    of the last child once SIGINT or SIGTERM stopped it. Raises ``ConfigError`` before anything
    starts without watchfiles, or when a ``--reload-dir`` is not a directory."""
    try:
        import watchfiles  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--reload needs watchfiles ({exc}): pip install 'microagent[reload]'") from None
    roots = [Path.cwd(), *(Path(folder).resolve() for folder in args.reload_dir)]
    missing = [str(root) for root in roots if not root.is_dir()]
    if missing:
        raise ConfigError(f'--reload-dir {", ".join(missing)}: not a directory')
    try:
        return asyncio.run(_Reloader(child_arguments(args), roots, args.grace).run())
    except KeyboardInterrupt:
        return 1


class _Reloader:
    def __init__(self, argv: Sequence[str], roots: Sequence[Path], grace: float) -> None:
        self.argv = [sys.executable, '-m', 'microagent.cli.marun', *argv]
        self.roots = roots
        self.grace = grace
        self.changed = asyncio.Event()  #: set when ``pending`` holds changed files
        self.pending: set[str] = set()
        self.stopping = asyncio.Event()
        self.child: asyncio.subprocess.Process | None = None

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stopping.is_set():
            log.info('Received %s: stopping the group', sig.name)
        self.stopping.set()
        if self.child is not None and self.child.returncode is None:
            self.child.send_signal(sig)  # the child's own stop path, first and second signal alike

    async def _watch(self, stop: asyncio.Event) -> None:
        from watchfiles import awatch

        async for batch in awatch(*self.roots, watch_filter=source_filter(), stop_event=stop, debounce=800):
            self.pending |= {path for _, path in batch}
            self.changed.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        stop_watching = asyncio.Event()
        watching = asyncio.create_task(self._watch(stop_watching), name='reload:watch')
        logging.getLogger('watchfiles').setLevel(logging.WARNING)  # 'N changes detected': ours names them
        log.info('Reload: watching *.py under %s', ', '.join(map(str, self.roots)))
        try:
            return await self._loop()
        finally:
            stop_watching.set()
            await asyncio.gather(watching, return_exceptions=True)

    async def _loop(self) -> int:
        while True:
            self._drain()  # what changed before this start is in the code it imports
            self.child = child = await asyncio.create_subprocess_exec(*self.argv)
            log.info('Reload: started the group (pid %d)', child.pid)
            exited = await self._first(child.wait(), self.changed.wait(), self.stopping.wait()) == 0
            if self.stopping.is_set():
                return await child.wait()
            if exited:
                log.warning('Reload: the group exited with code %d; waiting for a file change to start it again',
                            child.returncode)
                if await self._first(self.changed.wait(), self.stopping.wait()) != 0:
                    return child.returncode or 0
                self._announce(self._drain(), 'starting the group again')
                continue
            self._announce(self._drain(), 'restarting the group')
            await self._stop(child)
            if self.stopping.is_set():
                return child.returncode or 0

    @staticmethod
    async def _first(*waits: Any) -> int:
        """The position of the first of ``waits`` to finish; the others are cancelled."""
        tasks = [asyncio.ensure_future(wait) for wait in waits]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return min(tasks.index(task) for task in done)

    def _drain(self) -> set[str]:
        """The files changed since the last call."""
        found, self.pending = self.pending, set()
        self.changed.clear()
        return found

    def _announce(self, paths: set[str], what: str) -> None:
        names = sorted(_shown(path) for path in paths) or ['a source file']
        more = f' and {len(names) - SHOWN} more' if len(names) > SHOWN else ''  # a checkout changes hundreds
        log.info('Reload: %s%s changed: %s', ', '.join(names[:SHOWN]), more, what)

    async def _stop(self, child: asyncio.subprocess.Process) -> None:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.grace + KILL_MARGIN):
                await child.wait()
        except TimeoutError:
            log.error('Reload: the group did not stop within %.1fs: killing it', self.grace + KILL_MARGIN)
            child.kill()
            await child.wait()


def _shown(path: str) -> str:
    """A changed file as a user names it: relative to the current directory when under it."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else path
    except ValueError:
        return path
