"""The mailer: welcomes every new user with a mail through the typed ``mailer`` queue and a push
through the ``push`` exchange. Its SMTP server is busy the first time, so the broker retries."""
from __future__ import annotations

from microagent import Exchange, MicroAgent, consumer, on, receiver
from schemas import Mail, Push, UserCreated, mailer, user_created


class MailerAgent(MicroAgent):
    sends = (mailer, Exchange.get('push'))  # the push exchange routes to push_android and push_ios
    busy_once: set[str]
    mailed: int

    @on('pre_start')
    def setup(self) -> None:
        self.busy_once = set()
        self.mailed = 0

    @on('pre_stop')
    def summary(self) -> None:
        self.log.info('SUMMARY: mailed %d welcome mails, %d after a retry', self.mailed, len(self.busy_once))

    @receiver(user_created)
    async def welcome(self, user: UserCreated) -> None:
        self.log.info('RECEIVED user_created: user %d <%s>', user.user_id, user.email)
        await self.broker[mailer].send(Mail(to=user.email, subject=f'Welcome, {user.name}!'))
        self.log.info('QUEUED a welcome mail to %s on the mailer queue', user.email)
        platform = 'android' if user.user_id % 2 else 'ios'
        key = f'{user.user_id}.{platform}'
        await self.broker.publish('push', Push(user_id=user.user_id, text=f'Hi {user.name}!'), routing_key=key)
        self.log.info('PUBLISHED a push to the push exchange with routing key %s', key)

    @consumer(mailer, timeout=5, max_retries=3, retry_delay=0.5)
    async def send_mail(self, mail: Mail) -> None:
        if not self.busy_once:  # the first mail fails once, to show a retry
            self.busy_once.add(mail.to)
            self.log.warning('FAILED to send mail to %s: SMTP server busy (simulated); the broker will retry',
                             mail.to)
            raise ConnectionError('SMTP server busy (simulated)')
        self.mailed += 1
        retried = ' on the retry' if mail.to in self.busy_once else ''
        self.log.info('MAILED %r to %s%s', mail.subject, mail.to, retried)
