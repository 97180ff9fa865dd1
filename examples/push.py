"""The push service: one consumer per platform queue, both bound to the ``push`` topic exchange."""
from __future__ import annotations

from collections import Counter

from microagent import MicroAgent, consumer, on
from schemas import Push, push_android, push_ios


class PushAgent(MicroAgent):
    pushed: Counter[str]

    @on('pre_start')
    def setup(self) -> None:
        self.pushed = Counter()

    @on('pre_stop')
    def summary(self) -> None:
        self.log.info('SUMMARY: pushed %d to android, %d to iOS', self.pushed['android'], self.pushed['ios'])

    @consumer(push_android, timeout=5)
    async def android(self, push: Push) -> None:
        self.pushed['android'] += 1
        self.log.info('PUSHED to android, user %d: %s', push.user_id, push.text)

    @consumer(push_ios, timeout=5)
    async def ios(self, push: Push) -> None:
        self.pushed['ios'] += 1
        self.log.info('PUSHED to iOS, user %d: %s', push.user_id, push.text)
