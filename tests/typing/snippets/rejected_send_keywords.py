"""1.x keyword payloads are for 1.x declarations: a signal with a model takes the model instance, so a
keyword field (a typo, a missing field, a wrong type) is caught before it runs."""
from __future__ import annotations

from microagent import AbstractQueueBroker, AbstractSignalBus
from schemas import UserCreated, comments_count, mailer, user_created


async def send(bus: AbstractSignalBus, broker: AbstractQueueBroker) -> None:
    await bus[user_created].send('d', order_id='x')  # E: call-arg
    await bus[user_created].send('d', user_id=1, email='a@b.c')  # E: call-arg
    await bus[user_created].send('d', UserCreated(user_id=1, email='a@b.c'), user_id=2)  # E: call-arg
    await bus[comments_count].call('d', user_id=1)  # E: call-arg
    await bus[comments_count].call('d', user_id=1, timeout=5)  # E: call-arg
    async with bus[comments_count].waiter('d', user_id=1):  # E: call-arg
        pass
    await broker[mailer].send({'to': 'a@b.c'}, subject='hi')  # E: arg-type
    await bus[user_created].send('d', UserCreated(user_id=1, email='a@b.c'), headers={'x-tenant': 'acme'})
