"""A batch consumer takes a list of its queue's model."""
from __future__ import annotations

from microagent import BatchFailed, MicroAgent, consumer
from schemas import Mail, mailer


class Mailer(MicroAgent):
    @consumer(mailer, batch=100, batch_wait=0.5, max_retries=5)
    async def send(self, mails: list[Mail]) -> None:
        bounced = [mail for mail in mails if mail.to.endswith('.invalid')]
        if bounced:
            raise BatchFailed(bounced, 'bounced')
