"""Agents inside a web app: they start and stop with an ASGI app (FastAPI, Starlette, ...), its
endpoints send typed signals and queue messages through the agents' bus and broker, and its probes
include the agents' readiness.

    agents = AppAgents(UserAgent(bus=bus, broker=broker), grace=10)
    app = FastAPI(lifespan=agents.lifespan)         # Starlette(lifespan=...) alike
    app.mount('/agents', agents.endpoints)           # /agents/ready, ...; or one route:
    app.router.routes.append(Route('/ready', agents.endpoints))
    ... await agents.bus[user_created].send('web', UserCreated(...))   # in an endpoint

No web framework is imported here: ``lifespan`` is the ``lifespan(app)`` async context manager that
Starlette and FastAPI accept, and ``endpoints`` a bare ASGI app answering the routes of ``marun
--http`` (``/health``, ``/ready``, ``/metrics``, ``/asyncapi.json``, ``/docs``) exactly as that
server does (``microagent.ops.http.answer``), wherever it is mounted.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any, TypeVar

from microagent.agent import DEFAULT_GRACE, MicroAgent, close_engines, stop_within
from microagent.broker import AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.errors import UsageError
from microagent.logs import current_agent
from microagent.ops.endpoints import agent_endpoints
from microagent.ops.http import Endpoints, answer

__all__ = ['AppAgents', 'AsgiEndpoints', 'Receive', 'Scope', 'Send']

log = logging.getLogger('microagent.asgi')

#: the ASGI types, as Starlette spells them
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

A = TypeVar('A', bound=MicroAgent)
E = TypeVar('E')



class AsgiEndpoints:
    """The routes of ``marun --http`` as a bare ASGI app: mount it (``app.mount('/agents', it)``:
    ``/agents/ready``, ...) or give it one route (Starlette's ``Route('/ready', it)``). GET (and HEAD)
    only; a token guards all but ``/health`` and ``/ready`` as it does there."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope['type'] != 'http':
            raise UsageError(f'{type(self).__name__} answers HTTP requests only, not {scope["type"]!r}: '
                            'give the agents to the app as its lifespan')
        authorization = next((value for name, value in scope.get('headers', ()) if name.lower() == b'authorization'),
                             None)
        method = 'GET' if scope['method'] == 'HEAD' else scope['method']
        page = await answer(self.endpoints, method, _route_path(scope), authorization)
        headers = [(b'content-type', page.content_type.encode('latin-1')),
                   (b'content-length', str(len(page.body)).encode()), (b'cache-control', b'no-store')]
        if page.status == 405:
            headers.append((b'allow', b'GET'))
        elif page.status == 401:
            headers.append((b'www-authenticate', b'Bearer realm="microagent"'))
        await send({'type': 'http.response.start', 'status': page.status, 'headers': headers})
        await send({'type': 'http.response.body', 'body': b'' if scope['method'] == 'HEAD' else page.body})


def _route_path(scope: Scope) -> str:
    """The path under the mount point (``root_path``), as Starlette routes it."""
    path: str = scope['path']
    root: str = scope.get('root_path', '')
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == '/'):
        path = path[len(root):]
    return path or '/'


class AppAgents:
    """Agents that run with a web app: ``lifespan`` starts them when the app starts and stops them
    gracefully (``pre_stop`` hooks, ``grace`` seconds for work under way) when it shuts down, then
    closes their buses and brokers (``close=False`` leaves that to you). Also ``async with agents:``.

    ``bus`` and ``broker`` are the agents' (the first agent's that has one), for the app's endpoints
    to send through; ``get(UserAgent)`` is the agent of that class, typed. ``await problems()`` is
    what keeps agents from being ready, by agent name, empty when all are; ``endpoints`` serves it."""

    def __init__(self, *agents: MicroAgent, grace: float = DEFAULT_GRACE, close: bool = True,
                 token: str | None = None) -> None:
        if not agents:
            raise UsageError('AppAgents needs at least one agent')
        if grace < 0:
            raise UsageError(f'grace is seconds >= 0, got {grace!r}')
        self.agents: dict[str, MicroAgent] = {}
        for agent in agents:
            name = agent.agent_name
            count = sum(other.agent_name == name for other in agents)
            if count > 1:
                name = f'{name}.{sum(key.startswith(name + ".") for key in self.agents) + 1}'
            self.agents[name] = agent
        self.grace = grace
        self.close = close
        #: the ASGI app of ``/health``, ``/ready``, ``/metrics``, ``/asyncapi.json`` and ``/docs``
        self.endpoints = AsgiEndpoints(agent_endpoints(self.agents, token))
        self._contexts: dict[str, contextvars.Context] = {}
        self._started: list[str] = []

    def __repr__(self) -> str:
        return f'<AppAgents {", ".join(self.agents)}>'

    def get(self, cls: type[A]) -> A:
        """The agent of class ``cls`` (or a subclass); ``UsageError`` when there is none or several."""
        found = [agent for agent in self.agents.values() if isinstance(agent, cls)]
        if len(found) != 1:
            raise UsageError(f'{self!r} has {len(found) or "no"} agents of class {cls.__qualname__}')
        return found[0]

    @property
    def bus(self) -> AbstractSignalBus:
        """The signal bus of the first agent that has one."""
        return self._engine('bus', AbstractSignalBus)

    @property
    def broker(self) -> AbstractQueueBroker:
        """The queue broker of the first agent that has one."""
        return self._engine('broker', AbstractQueueBroker)

    def _engine(self, role: str, kind: type[E]) -> E:
        for agent in self.agents.values():
            engine = getattr(agent, role, None)
            if isinstance(engine, kind):
                return engine
        raise UsageError(f'{self!r}: no agent has a {role}')

    async def readiness(self) -> dict[str, list[str]]:
        """Why each agent is not ready, by name: every list is empty when all are ready."""
        found = await asyncio.gather(*(agent.readiness() for agent in self.agents.values()))
        return dict(zip(self.agents, found, strict=True))

    async def problems(self) -> dict[str, list[str]]:
        """The agents that are not ready and why; ``{}`` when all are (what ``/ready`` answers 503 with)."""
        return {name: reasons for name, reasons in (await self.readiness()).items() if reasons}

    async def start(self) -> None:
        """Start every agent, in order; when one fails, stop those started and raise."""
        if self._started:
            raise UsageError(f'{self!r} is already started')
        try:
            for name, agent in self.agents.items():
                context = self._contexts[name] = contextvars.copy_context()
                context.run(current_agent.set, name)  # their log lines name them, as under marun
                await asyncio.create_task(agent.__aenter__(), name=f'agent:{name}', context=context)
                self._started.append(name)
                agent.log.info('Started %s as %r with the app', type(agent).__qualname__, name)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the agents started, at once (each gets the grace), then close their buses and brokers."""
        started, self._started = self._started, []
        await asyncio.gather(*(asyncio.create_task(self._stop(name), context=self._contexts[name])
                               for name in started))
        if self.close:
            await close_engines((getattr(self.agents[name], role, None) for name in started
                                 for role in ('bus', 'broker')), 'AppAgents', log)

    async def _stop(self, name: str) -> None:
        agent = self.agents[name]
        if await stop_within(agent, name, self.grace, log):
            agent.log.info('Stopped')

    async def __aenter__(self) -> AppAgents:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """``FastAPI(lifespan=agents.lifespan)``: the agents run while the app does."""
        async with self:
            yield
