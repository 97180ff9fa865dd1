# mypy: disable-error-code="untyped-decorator"
"""Mistakes in a grouped receiver's options: the call is refused (the decorated function losing its
types is not the point)."""
from __future__ import annotations

from microagent import MicroAgent, receiver
from schemas import UserCreated, user_created


class Billing(MicroAgent):
    @receiver(user_created, group=3)  # E: call-overload
    async def numbered(self, event: UserCreated) -> None: ...

    @receiver(user_created, group='billing', start='last')  # E: call-overload
    async def from_the_end(self, event: UserCreated) -> None: ...

    @receiver(user_created, group='billing', max_retries='3')  # E: call-overload
    async def spelled(self, event: UserCreated) -> None: ...
