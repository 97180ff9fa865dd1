"""Rate limits: ``@consumer(rate=...)`` with a string or a ``Rate``, on one-message, batch and 1.x
consumers, and ``async with self.limit(...)`` around a call."""
from __future__ import annotations

from typing import Any

from microagent import Limit, MicroAgent, Queue, Rate, consumer
from schemas import Mail, mailer

notifications = Queue(name='notifications_rate')


class Mailer(MicroAgent):
    @consumer(mailer, rate='100/s')
    async def send(self, mail: Mail) -> None:
        async with self.limit('smtp', '10/s'):
            pass
        async with self.limit('smtp', Rate(10, 60, burst=2), count=2):
            pass
        limit: Limit = self.limit('api', '0.5/s')
        async with limit:
            pass


class Batched(MicroAgent):
    @consumer(mailer, batch=50, rate=Rate(1000, 3600))
    async def send(self, mails: list[Mail]) -> None: ...


class Legacy(MicroAgent):
    @consumer(notifications, rate='6/m')
    async def note(self, **kwargs: Any) -> None: ...
