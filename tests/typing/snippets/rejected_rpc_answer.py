"""Using the answer of an RPC signal as another type than the one it declares (``returns=int``)."""
from __future__ import annotations

from microagent import AbstractSignalBus
from schemas import CountQuery, comments_count


async def ask(bus: AbstractSignalBus) -> None:
    answers = await bus[comments_count].call('me', CountQuery(user_id=1))
    text: str = answers['CommentAgent.count']  # E: assignment
    wrong: dict[str, str] = await bus[comments_count].call('me', CountQuery(user_id=1))  # E: assignment
    async with bus[comments_count].waiter('me', CountQuery(user_id=1)) as replies:
        async for reply in replies:
            reply['CommentAgent.count'].upper()  # E: attr-defined
    right: int = answers['CommentAgent.count']
    print(text, wrong, right)
