"""A batch consumer that takes one model, or a list of another model."""
from __future__ import annotations

from microagent import MicroAgent, consumer
from schemas import Mail, Push, mailer


class Mailer(MicroAgent):
    @consumer(mailer, batch=100)  # E: arg-type
    async def one(self, mail: Mail) -> None: ...

    @consumer(mailer, batch=100)  # E: arg-type
    async def other_model(self, pushes: list[Push]) -> None: ...

    @consumer(mailer, batch=100)
    async def right(self, mails: list[Mail]) -> None: ...
