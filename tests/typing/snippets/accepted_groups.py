"""Grouped receivers type-check like broadcast ones: the group and its retry options are typed keywords."""
from __future__ import annotations

from microagent import MicroAgent, receiver
from microagent.groups import GroupOptions
from microagent.tools.memory import MemorySignalBus
from schemas import CountQuery, UserCreated, comments_count, user_created


class Billing(MicroAgent):
    group = 'billing'

    @receiver(user_created, group=True, max_retries=5, retry_delay=0.5, start='first')
    async def bill(self, event: UserCreated) -> None: ...

    @receiver(comments_count, group='counters')
    async def count(self, query: CountQuery) -> int:
        return 3

    @receiver(user_created, group=False)
    async def everywhere(self, event: UserCreated) -> None: ...


agent = Billing(bus=MemorySignalBus(group_options=GroupOptions(max_length=1000, visibility_timeout=30)),
                name='billing', group='billing-eu')
