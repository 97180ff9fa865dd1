"""Consumer options are typed keywords: a misspelled or ill-typed option never passes unnoticed."""
from __future__ import annotations

from typing import Any

from microagent import MicroAgent, consumer
from schemas import Mail, mailer, push_android

consumer(mailer, max_retry=10)  # E: call-overload
consumer(mailer, concurency=4)  # E: call-overload
consumer(mailer, autoack='no')  # E: call-overload
consumer(push_android, retry_delay='soon')  # E: call-overload
consumer(mailer, prefetch=1.5)  # E: call-overload


class Options(MicroAgent):
    @consumer(mailer, timeout=5, concurrency=4, prefetch=8, max_retries=10, retry_delay=0.5, autoack=False)
    async def every_option(self, mail: Mail) -> None: ...

    @consumer(push_android, autoack=False)
    async def legacy(self, **kwargs: Any) -> None: ...
