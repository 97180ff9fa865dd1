"""DESIGN.md sections 3-5: mypy --strict accepts all of it.

One change from the text: DESIGN names a method ``legacy`` and then consumes the queue ``legacy`` in
the same class body, where the name already means the method; the method is ``legacy_started`` here.
"""
from __future__ import annotations

from typing import Any

import msgspec

from microagent import MicroAgent, Queue, Signal, consumer, load_stuff, periodic, receiver
from schemas import CountQuery, Mail, Push, UserCreated, comments_count, mailer, user_created


class MyDTO(msgspec.Struct):
    user_id: int


android = Queue('android', Push, exchange='push', topics=['*.android'])
started = Signal(name='started', providing_args=[])
legacy = Queue(name='legacy')
signals, queues = load_stuff('file://signals.json')
by_attribute = Signal.user_created, Queue.mailer


class UserAgent(MicroAgent):
    @receiver(user_created)
    async def welcome(self, event: UserCreated) -> None:
        await self.broker[mailer].send(Mail(to=event.email, subject='Welcome'))

    @receiver(comments_count)
    async def count(self, query: CountQuery, *, sender: str) -> int:
        return 3

    @consumer(mailer, timeout=30)
    async def send_mail(self, mail: Mail) -> None: ...

    @receiver(started)
    async def legacy_started(self, signal: Signal, sender: str, **kwargs: Any) -> None: ...

    @consumer(legacy, dto_class=MyDTO, dto_name='obj')
    async def legacy_dto(self, obj: MyDTO, **kwargs: Any) -> None: ...

    @periodic(5)
    async def send_all(self) -> None:
        await self.bus[user_created].send('user_agent', UserCreated(user_id=1, email='a@b.c'))
        answers: dict[str, int] = await self.bus[comments_count].call('user_agent', CountQuery(user_id=1))
        async with self.bus[comments_count].waiter('user_agent', CountQuery(user_id=1)) as replies:
            async for reply in replies:
                total: int = sum(reply.values())
        await self.broker[mailer].send(Mail(to='a@b.c', subject='hi'))
        await self.broker[mailer].send_many([Mail(to='a@b.c', subject='hi'), Mail(to='d@e.f', subject='hi')])
        await self.bus.user_created.send('user_agent', user_id=1, email='a@b.c')
        await self.broker.mailer.send({'to': 'a@b.c', 'subject': 'hi'})
        waiting: int = await self.broker.mailer.length()
        print(answers, total, waiting)
