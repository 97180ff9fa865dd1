"""Sending a payload of the wrong model through ``bus[signal]`` or ``broker[queue]``."""
from __future__ import annotations

from microagent import AbstractQueueBroker, AbstractSignalBus
from schemas import Mail, Push, UserCreated, UserDeleted, comments_count, mailer, user_created


async def send(bus: AbstractSignalBus, broker: AbstractQueueBroker) -> None:
    await bus[user_created].send('me', UserDeleted(user_id=1))  # E: arg-type
    await bus[comments_count].call('me', UserCreated(user_id=1, email='a@b.c'))  # E: arg-type
    await broker[mailer].send(Push(user_id=1, text='hi'))  # E: arg-type
    await broker[mailer].send_many([Mail(to='a@b.c', subject='hi'), Push(user_id=1, text='hi')])  # E: list-item
    await bus[user_created].send('me', UserCreated(user_id=1, email='a@b.c'))
    await broker[mailer].send(Mail(to='a@b.c', subject='hi'))
