"""The HTTP endpoints of a marun group (``--http``): its probes, and the contract of its settings
modules as a fleet (AsyncAPI and the docs page), loaded on first use."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from microagent.cli.targets import load_fleet
from microagent.contract.asyncapi import asyncapi
from microagent.contract.docs_page import render_docs
from microagent.contract.fleet import Fleet
from microagent.ops.http import Endpoints, Readiness

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


def fleet_endpoints(modules: Sequence[str], readiness: Readiness, registry: CollectorRegistry | None = None,
                    metrics: Callable[[], Awaitable[bytes]] | None = None) -> Endpoints:
    """The endpoints of a marun group: the contract of its settings modules as a fleet."""
    fleet: list[Fleet] = []

    def loaded() -> Fleet:
        if not fleet:
            fleet.append(load_fleet(list(modules)))
        return fleet[0]

    def document() -> Mapping[str, Any]:
        found = loaded()
        return asyncapi(*(agent.cls for agent in found.agents), title=', '.join(modules),
                        servers=found.servers(), declarations=found.declarations)

    return Endpoints(readiness, document, lambda: render_docs(loaded()), registry, metrics)
