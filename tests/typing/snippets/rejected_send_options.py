"""Send keywords are typed: a misspelled or ill-typed one is caught before it is dropped."""
from __future__ import annotations

from microagent import AbstractQueueBroker
from schemas import Mail, mailer


async def send(broker: AbstractQueueBroker) -> None:
    mail = Mail(to='a@b.c', subject='hi')
    await broker[mailer].send(mail, dely=30)  # E: arg-type
    await broker[mailer].send(mail, delay='30')  # E: arg-type
    await broker[mailer].send_many([mail], exchange='push')  # E: arg-type
    await broker[mailer].send(mail, delay=30)
    await broker[mailer].send_many([mail], delay=0.5)
    await broker.mailer.send({'to': 'a@b.c', 'subject': 'hi'}, properties={'priority': 1}, exchange='x', topic='a.b')
