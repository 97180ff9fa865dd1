"""How ``marun --http`` answers for a group whose agents run in processes of their own.

One port serves the whole group, so a Kubernetes probe (or a scrape) needs one address: the
supervisor listens, and

* ``/ready`` asks every agent process over a socket pair made for it (a line ``N ready`` out, a line
  ``N {"agent": [reasons]}`` back; an answer to an older question is skipped), with a deadline: a
  process that died or hangs is a reason too. ``/ready`` is 200 only when every agent is ready.
* ``/metrics`` asks every agent process the same way for its registry's text, parses it with
  prometheus-client's parser and serves all of it as one exposition, each sample labelled
  ``marun_agent`` with the agent's name (two processes never collide; ``sum by`` adds them up).
  An agent process that does not answer in time is left out of that scrape. A process where no
  ``PrometheusMiddleware`` counts messages says so in a comment line, and the exposition names
  those agents in one (``# microagent: no PrometheusMiddleware counts messages in agents ...``).

With ``--single-process`` (and ``agent.serve_http``) the one process answers everything itself.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from microagent.errors import ConnectionFailed
from microagent.ops.http import PROCESS_ONLY, exposition, process_only
from microagent.readiness import PING_TIMEOUT

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from microagent.agent import MicroAgent

__all__ = ['AgentProcess', 'LocalAgents', 'answer_questions', 'group_metrics', 'group_readiness']

log = logging.getLogger('microagent.launcher')

GROUP_LABEL = 'marun_agent'
#: how long the supervisor waits for an agent process's answer: its pings, and a margin
ANSWER_TIMEOUT = PING_TIMEOUT + 1.0
MAX_ANSWER = 64 * 1024 * 1024  # bytes of one answer line: a registry's text, however large


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


async def answer_questions(fd: int, agents: LocalAgents) -> None:
    """In an agent process: answer each question from the supervisor until it closes the socket."""
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    try:
        while question := (await reader.readline()).strip():
            number, _, what = question.partition(b' ')
            answer: Any = await agents.readiness() if what == b'ready' else local_metrics()
            writer.write(number + b' ' + json.dumps(answer).encode() + b'\n')
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
        try:
            found: dict[str, list[str]] = await self._ask(b'ready')
            return found
        except TimeoutError:
            return {self.name: [f'the agent process did not answer within {ANSWER_TIMEOUT:g}s']}
        except (ConnectionError, ValueError) as exc:
            return {self.name: [f'the agent process does not answer ({type(exc).__name__}: {exc})']}

    async def metrics(self) -> str:
        try:
            text: str = await self._ask(b'metrics')
            return text
        except (TimeoutError, ConnectionError, ValueError) as exc:
            log.warning('Agent %s: no metrics in this scrape (%s)', self.name, type(exc).__name__)
            return ''

    async def _ask(self, what: bytes) -> Any:
        async with self._lock, asyncio.timeout(ANSWER_TIMEOUT):
            if self._streams is None:
                self._streams = await asyncio.open_connection(sock=self.ours, limit=MAX_ANSWER)
            reader, writer = self._streams
            self._asked += 1
            writer.write(b'%d %s\n' % (self._asked, what))
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionFailed('it exited')
                number, _, answer = line.partition(b' ')
                if int(number) == self._asked:  # older ones answer questions that timed out
                    return json.loads(answer)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
        self.ours.close()
        self.theirs.close()


async def group_readiness(processes: Iterable[AgentProcess]) -> dict[str, list[str]]:
    found = await asyncio.gather(*(process.readiness() for process in processes))
    return {name: problems for answer in found for name, problems in answer.items()}


def local_metrics() -> str:
    """This process's metrics as Prometheus text ('' without prometheus-client)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return ''
    return exposition().decode()


async def group_metrics(processes: Iterable[AgentProcess]) -> bytes:
    """The agent processes' metrics as one exposition, each sample labelled ``marun_agent``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    processes = list(processes)
    texts = await asyncio.gather(*(process.metrics() for process in processes))
    merged: dict[str, Metric] = {}
    uncounted = [process.name for process, text in zip(processes, texts, strict=True)
                 if text.startswith(PROCESS_ONLY)]
    for process, text in zip(processes, texts, strict=True):
        for family in text_string_to_metric_families(text):
            into = merged.setdefault(family.name, _empty_like(family))
            into.samples += [sample._replace(labels={**sample.labels, GROUP_LABEL: process.name})
                             for sample in family.samples]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(merged.values())))
    note = process_only(f'agent{"s" * (len(uncounted) > 1)} {", ".join(uncounted)}') if uncounted else ''
    return note.encode() + generate_latest(registry)


def _empty_like(family: Metric) -> Metric:
    from prometheus_client.core import Metric

    return Metric(family.name, family.documentation, family.type, family.unit)


class _Families:
    """Families parsed from the agent processes, handed to prometheus-client's exposition."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
