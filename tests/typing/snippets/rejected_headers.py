"""User headers are text: a header value of another type, or a Message used as the payload, is caught."""
from __future__ import annotations

from microagent import AbstractQueueBroker, AbstractSignalBus, Message, MicroAgent, consumer
from schemas import Mail, UserCreated, mailer, user_created


async def send(broker: AbstractQueueBroker, bus: AbstractSignalBus) -> None:
    mail = Mail(to='a@b.c', subject='hi')
    await broker[mailer].send(mail, headers={'tenant': 1})  # E: dict-item
    await broker[mailer].send_many([mail], headers=['tenant'])  # E: arg-type
    await bus[user_created].send('x', UserCreated(user_id=1, email='a@b.c'), headers={'n': 2})  # E: dict-item
    await broker[mailer].send(mail, headers={'tenant': 'acme'})


class Worker(MicroAgent):
    @consumer(mailer)  # E: arg-type
    async def work(self, mail: Message) -> None: ...

    async def read(self, message: Message) -> int:
        return message.attempt + message.message_id  # E: operator
