"""1.x handlers and other forms that must stay accepted next to the typed ones."""
from __future__ import annotations

from typing import Any

import msgspec

from microagent import MicroAgent, Queue, Signal, consumer, cron, on, periodic, receiver
from schemas import UserCreated, UserDeleted, comments_count, mailer, user_created, user_deleted


class MyDTO(msgspec.Struct):
    text: str


started = Signal(name='started', providing_args=['user_id'])
plain = Queue(name='plain')


class LegacyAgent(MicroAgent):
    @receiver(started)
    async def any_kwargs(self, **kwargs: Any) -> None: ...

    @receiver(user_created)  # a typed signal may still have a 1.x handler
    async def typed_signal_kwargs(self, signal: Signal, sender: str, **kwargs: Any) -> None: ...

    @receiver(started)
    async def sender_only(self, sender: str, **kwargs: Any) -> None: ...

    @receiver(started)  # 1.x declarations carry no types: payload fields may be parameters
    async def named_field(self, user_id: int, **kwargs: Any) -> None: ...

    @receiver(started, timeout=5)
    async def no_payload(self) -> None: ...

    @receiver(user_created, user_deleted)
    async def either(self, event: UserCreated | UserDeleted) -> None: ...

    @receiver(comments_count)
    async def no_answer(self, query: Any) -> None: ...

    @consumer(plain)
    async def plain_kwargs(self, **kwargs: Any) -> None: ...

    @consumer(mailer, dto_class=MyDTO)
    async def dto_default_name(self, dto: MyDTO, **kwargs: Any) -> None: ...

    @consumer(plain, dto_class=MyDTO, dto_name='obj', concurrency=4)
    async def dto_named(self, obj: MyDTO, **kwargs: Any) -> None: ...

    @periodic(period=5, timeout=2)
    async def tick(self) -> None: ...

    @cron('0 * * * *')
    async def hourly(self) -> None: ...

    @on('pre_start')
    def setup(self) -> None: ...

    @on('server')
    async def serve(self) -> None: ...


async def direct_calls(agent: LegacyAgent, event: UserCreated) -> None:
    await agent.either(event)  # decorated methods keep their types
    await agent.tick()
