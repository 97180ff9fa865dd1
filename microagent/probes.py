"""How ``marun --http`` answers for a group whose agents run in processes of their own.

One port serves the whole group, so a Kubernetes probe (or a scrape) needs one address: the
supervisor listens, and

* ``/ready`` asks every agent process over a socket pair made for it (a line ``N`` out, a line
  ``N {"agent": [reasons]}`` back; an answer to an older question is skipped), with a deadline: a
  process that died or hangs is a reason too. ``/ready`` is 200 only when every agent is ready.
* ``/metrics`` is prometheus-client's multiprocess mode: the supervisor gives its agent processes a
  ``PROMETHEUS_MULTIPROC_DIR`` (its own temporary one unless the environment names one), their
  metrics live in files there, and the supervisor's ``MultiProcessCollector`` adds them up.
  Counters and histograms are summed over processes; metrics of custom collectors in agent
  processes are not seen (only those of prometheus-client's metric classes).

With ``--single-process`` (and ``agent.serve_http``) the one process answers everything itself.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from .readiness import PING_TIMEOUT

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .agent import MicroAgent

__all__ = ['AgentProcess', 'LocalAgents', 'answer_readiness', 'metrics_dir', 'multiprocess_registry']

log = logging.getLogger('microagent.launcher')

MULTIPROC_ENV = 'PROMETHEUS_MULTIPROC_DIR'
#: how long the supervisor waits for an agent process's answer: its pings, and a margin
ANSWER_TIMEOUT = PING_TIMEOUT + 1.0


class LocalAgents:
    """The agents of this process by name, as they are built; one not built yet is not started."""

    def __init__(self, names: Iterable[str]) -> None:
        self.agents: dict[str, MicroAgent | None] = dict.fromkeys(names)

    def add(self, name: str, agent: MicroAgent) -> None:
        self.agents[name] = agent

    async def readiness(self) -> dict[str, list[str]]:
        names = list(self.agents)

        async def one(agent: MicroAgent | None) -> list[str]:
            return ['not started yet'] if agent is None else await agent.readiness()

        found = await asyncio.gather(*(one(self.agents[name]) for name in names))
        return dict(zip(names, found, strict=True))


async def answer_readiness(fd: int, agents: LocalAgents) -> None:
    """In an agent process: answer each question from the supervisor until it closes the socket."""
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    try:
        while question := (await reader.readline()).strip():
            answer = json.dumps(await agents.readiness())
            writer.write(question + b' ' + answer.encode() + b'\n')
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class AgentProcess:
    """The supervisor's end of one agent process's socket pair."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ours, self.theirs = socket.socketpair()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._asked = 0
        self._lock = asyncio.Lock()

    def started(self) -> None:
        """The process has its end now: close ours of it."""
        self.theirs.close()

    async def readiness(self) -> dict[str, list[str]]:
        async with self._lock:
            try:
                async with asyncio.timeout(ANSWER_TIMEOUT):
                    return await self._ask()
            except TimeoutError:
                return {self.name: [f'the agent process did not answer within {ANSWER_TIMEOUT:g}s']}
            except (ConnectionError, EOFError, ValueError) as exc:
                return {self.name: [f'the agent process does not answer ({type(exc).__name__}: {exc})']}

    async def _ask(self) -> dict[str, list[str]]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(sock=self.ours)
        reader, writer = self._streams
        self._asked += 1
        writer.write(b'%d\n' % self._asked)
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                raise EOFError('it exited')
            number, _, answer = line.partition(b' ')
            if int(number) == self._asked:  # older ones answer questions that timed out
                found: dict[str, list[str]] = json.loads(answer)
                return found

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
        self.ours.close()
        self.theirs.close()


async def group_readiness(processes: Iterable[AgentProcess]) -> dict[str, list[str]]:
    found = await asyncio.gather(*(process.readiness() for process in processes))
    return {name: problems for answer in found for name, problems in answer.items()}


@contextlib.contextmanager
def metrics_dir(environ: Mapping[str, str]) -> Iterator[str | None]:
    """The multiprocess directory for the agent processes (None without prometheus-client): the
    environment's, or a temporary one removed at the end."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        yield None
        return
    given = environ.get(MULTIPROC_ENV)
    if given:
        yield given
        return
    path = tempfile.mkdtemp(prefix='marun-metrics-')
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def multiprocess_registry(path: str) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]  # unannotated upstream
    return registry


def process_exited(path: str | None, pid: int) -> None:
    """Forget the live gauges of an agent process that exited (its counters stay counted)."""
    if path is None:
        return
    from prometheus_client.multiprocess import mark_process_dead

    with contextlib.suppress(OSError):
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]  # unannotated upstream


def child_env(path: str | None) -> dict[str, str]:
    return {**os.environ, MULTIPROC_ENV: path} if path else dict(os.environ)
