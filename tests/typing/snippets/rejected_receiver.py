"""A receiver whose DTO parameter is not its signal's model, or whose answer is not the RPC's."""
from __future__ import annotations

from typing import Any

from microagent import MicroAgent, receiver
from schemas import CountQuery, Mail, UserCreated, comments_count, user_created


class WrongReceiver(MicroAgent):
    @receiver(user_created)  # E: arg-type
    async def wrong_model(self, event: Mail) -> None: ...

    @receiver(comments_count)  # E: arg-type
    async def wrong_answer(self, query: CountQuery) -> str:
        return 'three'

    @receiver(user_created)  # E: arg-type
    async def kwargs_and_model(self, event: UserCreated, **kwargs: Any) -> None: ...  # **kwargs: the 1.x call

    @receiver(user_created)  # E: arg-type
    def not_async(self, event: UserCreated) -> None: ...

    @receiver(user_created)
    async def right(self, event: UserCreated) -> None: ...
