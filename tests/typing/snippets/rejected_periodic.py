"""``@periodic`` and ``@cron`` call the method with no arguments: one that takes some is rejected."""
from __future__ import annotations

from microagent import MicroAgent, cron, periodic


class WrongTimers(MicroAgent):
    @periodic(5)  # E: type-var
    async def needs_argument(self, count: int) -> None: ...

    @cron('* * * * *')  # E: type-var
    async def cron_argument(self, when: float) -> None: ...

    @periodic(5)
    async def right(self) -> None: ...
