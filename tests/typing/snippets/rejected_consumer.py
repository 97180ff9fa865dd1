"""A consumer whose DTO parameter is not its queue's model nor its ``dto_class``."""
from __future__ import annotations

from typing import Any

import msgspec

from microagent import MicroAgent, consumer
from schemas import Mail, UserCreated, mailer, push_android


class MyDTO(msgspec.Struct):
    text: str


class WrongConsumer(MicroAgent):
    @consumer(mailer)  # E: arg-type
    async def wrong_model(self, mail: UserCreated) -> None: ...

    @consumer(push_android, dto_class=MyDTO)  # E: arg-type
    async def wrong_dto(self, dto: Mail) -> None: ...

    @consumer(push_android, dto_class=MyDTO)  # E: arg-type
    async def wrong_dto_kwargs(self, dto: Mail, **kwargs: Any) -> None: ...  # 1.x call: the DTO as `dto`

    @consumer(mailer)  # E: arg-type
    async def kwargs_and_model(self, mail: Mail, **kwargs: Any) -> None: ...  # 1.x call: no DTO at all

    @consumer(mailer, timeout=5)
    async def right(self, mail: Mail) -> None: ...

    @consumer(push_android, dto_class=MyDTO)
    async def right_kwargs(self, dto: MyDTO, **kwargs: Any) -> None: ...
