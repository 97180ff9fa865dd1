"""Indexing a bus or broker: by declaration it is typed by the model, by name it is the untyped 1.x
form (as attribute access is)."""
from __future__ import annotations

from typing import Any, assert_type

from microagent import AbstractQueueBroker, AbstractSignalBus
from microagent.broker import BoundQueue
from microagent.bus import BoundSignal
from schemas import Mail, UserCreated, mailer, user_created


async def index(bus: AbstractSignalBus, broker: AbstractQueueBroker) -> None:
    assert_type(bus[user_created], BoundSignal[UserCreated, Any])
    assert_type(broker[mailer], BoundQueue[Mail])
    assert_type(bus['user_created'], BoundSignal[Any, Any])
    assert_type(broker['mailer'], Any)
    await bus['user_created'].send('me', user_id=1, email='a@b.c')
    await broker['mailer'].send({'to': 'a@b.c', 'subject': 'hi'})
    length: int = await broker['mailer'].length()
    assert length >= 0
