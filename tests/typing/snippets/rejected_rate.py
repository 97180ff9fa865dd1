"""A rate is a string or a ``Rate``; ``limit`` takes a name, a rate and a keyword count, and is
used with ``async with``."""
from __future__ import annotations

from microagent import MicroAgent, Rate, consumer
from schemas import Mail, mailer

consumer(mailer, rate=100)  # E: call-overload
consumer(mailer, batch=10, rate=b'10/s')  # E: call-overload


class Mailer(MicroAgent):
    @consumer(mailer, rate='10/s')
    async def send(self, mail: Mail) -> None:
        async with self.limit('smtp', 10):  # E: arg-type
            pass
        async with self.limit('smtp', '10/s', 2):  # E: call-arg
            pass
        with self.limit('smtp', '10/s'):  # E: attr-defined
            pass
        Rate('10/s')  # E: arg-type
