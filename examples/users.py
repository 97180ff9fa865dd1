"""The user service: signs up a user every second, announces it with a typed signal, asks the
comment service over RPC how many comments the user has, and reports on a cron schedule."""
from __future__ import annotations

from microagent import MicroAgent, cron, on, periodic
from schemas import CountQuery, UserCreated, comments_count, user_created

NAMES = ('ada', 'grace', 'alan', 'edsger', 'barbara', 'donald', 'margaret', 'ken', 'linus', 'guido')


class UserAgent(MicroAgent):
    sends = (user_created, comments_count)
    signed_up: int

    @on('pre_start')
    def setup(self) -> None:
        self.signed_up = 0

    @periodic(period=1.0, timeout=5, start_after=1.0)
    async def sign_up(self) -> None:
        self.signed_up += 1
        user_id = self.signed_up
        name = NAMES[(user_id - 1) % len(NAMES)]
        user = UserCreated(user_id=user_id, email=f'{name}{user_id}@example.com', name=name.title())
        await self.bus[user_created].send('users', user)
        self.log.info('SENT signal user_created: user %d %s <%s>', user.user_id, user.name, user.email)
        try:
            answers = await self.bus[comments_count].call('users', CountQuery(user_id=user_id), timeout=2)
        except TimeoutError:
            self.log.warning('No answer to comments_count for user %d (is the comments service up?)', user_id)
            return
        for who, count in answers.items():
            self.log.info('GOT answer to comments_count for user %d from %s: %d', user_id, who, count)

    @on('pre_stop')
    def summary(self) -> None:
        self.log.info('SUMMARY: signed up %d users', self.signed_up)

    @cron('* * * * * */5', timeout=5)  # croniter's sixth field is seconds: every 5 s
    async def report(self) -> None:
        self.log.info('CRON report: %d users signed up so far', self.signed_up)
