"""Agents inside a web app: FastAPI takes the lifespan and the endpoints as they are, and the app's
endpoints send typed signals and messages through the agents' bus and broker."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI
from starlette.routing import Route

from microagent import MicroAgent, receiver
from microagent.backends.memory import MemoryBroker, MemorySignalBus
from microagent.ops.asgi import AppAgents, Receive, Scope, Send
from schemas import Mail, UserCreated, mailer, user_created


class UserAgent(MicroAgent):
    @receiver(user_created)
    async def welcome(self, event: UserCreated) -> None:
        await self.broker[mailer].send(Mail(to=event.email, subject='Welcome'))


agents = AppAgents(UserAgent(bus=MemorySignalBus(), broker=MemoryBroker()), grace=5, close=False)
app = FastAPI(lifespan=agents.lifespan)
app.mount('/agents', agents.endpoints)
app.router.routes.append(Route('/ready', agents.endpoints))
lifespan: Callable[[object], AbstractAsyncContextManager[None]] = agents.lifespan
asgi: Callable[[Scope, Receive, Send], Awaitable[None]] = agents.endpoints


async def create_user(user_id: int) -> dict[str, list[str]]:
    await agents.bus[user_created].send('web', UserCreated(user_id=user_id, email='ada@example.com'))
    await agents.broker[mailer].send(Mail(to='ada@example.com', subject='hi'))
    agent: UserAgent = agents.get(UserAgent)
    await agent.welcome(UserCreated(user_id=user_id, email='ada@example.com'))
    async with agents:
        pass
    return await agents.problems()
