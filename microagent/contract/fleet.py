"""The fleet model: which agents there are, what each receives and sends, and over which servers.

``microagent.cli.targets.load_fleet`` builds one from what ``microagent schema``, ``check`` and
``docs`` are given; a running group builds one from its agents. Nothing is connected or started.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from microagent.contract.info import Described
from microagent.handlers import ConsumerSpec, ReceiverSpec
from microagent.sends import Sendable
from microagent.signal import Signal


@dataclass(frozen=True)
class FleetAgent:
    """One agent of the fleet: its name in the settings (the class name otherwise) and its servers."""

    name: str
    cls: type[Described]
    bus_dsn: str | None = None
    broker_dsn: str | None = None

    def receives(self) -> list[Signal[Any, Any]]:
        return [spec.signal for found in self.cls._specs.values() for spec in found if isinstance(spec, ReceiverSpec)]

    def consumes(self) -> list[ConsumerSpec]:
        return [spec for found in self.cls._specs.values() for spec in found if isinstance(spec, ConsumerSpec)]


@dataclass
class Fleet:
    title: str
    agents: list[FleetAgent] = field(default_factory=list)
    declarations: list[Sendable] = field(default_factory=list)  # given alone, not through an agent
    heading: str = ''  #: what a person calls the fleet: a settings module's ``TITLE``; '': none given

    def servers(self) -> dict[str, str]:
        """Server name -> DSN, one per distinct DSN."""
        found: dict[str, str] = {}
        for agent in self.agents:
            for role, dsn in (('bus', agent.bus_dsn), ('broker', agent.broker_dsn)):
                if dsn and dsn not in found.values():
                    found[f'{agent.name}.{role}'] = dsn
        return found
