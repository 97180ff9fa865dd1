"""Agents inside a web app keep the declarations' types: a wrong model sent from an endpoint, the
wrong agent class, a wrong option."""
from __future__ import annotations

from microagent import MicroAgent
from microagent.backends.memory import MemoryBroker, MemorySignalBus
from microagent.ops.asgi import AppAgents
from schemas import Mail, UserCreated, mailer, user_created


class UserAgent(MicroAgent):
    pass


class MailAgent(MicroAgent):
    pass


agents = AppAgents(UserAgent(bus=MemorySignalBus(), broker=MemoryBroker()))
late = AppAgents(UserAgent(), grace='10')  # E: arg-type


async def endpoint() -> None:
    await agents.bus[user_created].send('web', Mail(to='ada@example.com', subject='hi'))  # E: arg-type
    await agents.broker[mailer].send(UserCreated(user_id=1, email='ada@example.com'))  # E: arg-type
    wrong: MailAgent = agents.get(UserAgent)  # E: assignment
    ready: bool = await agents.problems()  # E: assignment
    print(wrong, ready)
