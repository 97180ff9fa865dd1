"""Handlers that name ``message: Message`` and sends with user headers: mypy --strict accepts them."""
from __future__ import annotations

from microagent import Message, MicroAgent, RemoteError, consumer, receiver
from schemas import CountQuery, Mail, UserCreated, comments_count, mailer, user_created


class HeaderAgent(MicroAgent):
    @receiver(user_created)
    async def welcome(self, event: UserCreated, *, message: Message) -> None:
        tenant: str | None = message.headers.get('tenant')
        await self.broker[mailer].send(Mail(to=event.email, subject='Welcome'), headers={'tenant': tenant or ''})

    @receiver(comments_count)
    async def count(self, query: CountQuery, *, sender: str, message: Message) -> int:
        return message.attempt

    @consumer(mailer, max_retries=5)
    async def send_mail(self, mail: Mail, message: Message) -> None:
        first_try: bool = message.attempt == 1 and not message.redelivered
        trace: str | None = message.trace_id
        print(first_try, trace, message.correlation_id, message.sent_at)

    async def ask(self) -> int:
        try:
            answers = await self.bus[comments_count].call('header_agent', CountQuery(user_id=1),
                                                          headers={'tenant': 'acme'})
        except RemoteError as error:
            print(error.receiver, error.reason)
            return 0
        async with self.bus[comments_count].waiter('header_agent', CountQuery(user_id=1)) as replies:
            async for reply in replies:
                print(reply)
            failed: list[RemoteError] = replies.errors
        await self.bus[user_created].send('header_agent', UserCreated(user_id=1, email='a@b.c'), headers={'a': 'b'})
        await self.broker[mailer].send_many([Mail(to='a@b.c', subject='x')], headers={'a': 'b'}, delay=1.5)
        return sum(answers.values()) + len(failed)
