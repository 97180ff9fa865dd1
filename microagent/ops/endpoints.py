"""The HTTP endpoints of agents running in this process (``agent.run(http=...)``): their readiness,
their AsyncAPI document and their docs page, over the server of ``http.py``."""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from microagent.contract.asyncapi import asyncapi
from microagent.contract.docs_page import render_docs
from microagent.contract.fleet import Fleet, FleetAgent
from microagent.contract.info import Described
from microagent.ops.http import Endpoints


class Served(Described, Protocol):
    """An agent instance as the endpoints see it (every ``MicroAgent`` is one)."""

    async def readiness(self) -> list[str]: ...


def agent_endpoints(agents: Mapping[str, Served], token: str | None = None) -> Endpoints:
    """The endpoints of agents running in this process (``agent.serve(http=...)``), by name."""
    async def readiness() -> dict[str, list[str]]:
        found = await asyncio.gather(*(agent.readiness() for agent in agents.values()))
        return dict(zip(agents, found, strict=True))

    def docs() -> str:
        fleet = Fleet(', '.join(agents), [FleetAgent(name, type(agent), _dsn(agent, 'bus'), _dsn(agent, 'broker'))
                                         for name, agent in agents.items()])
        return render_docs(fleet)

    return Endpoints(readiness, lambda: asyncapi(*agents.values(), title=', '.join(agents)), docs, token=token)


def _dsn(agent: Served, role: str) -> str | None:
    engine = getattr(agent, role, None)
    dsn = getattr(engine, 'dsn', None)
    return dsn if isinstance(dsn, str) and dsn else None
