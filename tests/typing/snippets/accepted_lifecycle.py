"""``async with`` gives the agent's own class, so its methods and attributes are typed."""
from __future__ import annotations

from typing import assert_type

from microagent import MicroAgent
from microagent.backends.memory import MemoryBroker, MemoryHub, MemorySignalBus


class Sub(MicroAgent):
    count = 0

    async def own(self) -> int:
        return self.count


async def run() -> None:
    hub = MemoryHub()
    async with Sub(bus=MemorySignalBus(hub=hub), broker=MemoryBroker(hub=hub)) as agent:
        assert_type(agent, Sub)
        same: Sub = agent
        answer: int = await same.own()
        assert answer == agent.count
