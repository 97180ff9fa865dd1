"""The push service: one consumer per platform queue, both bound to the ``push`` topic exchange."""
from __future__ import annotations

from microagent import MicroAgent, consumer
from schemas import Push, push_android, push_ios


class PushAgent(MicroAgent):
    @consumer(push_android, timeout=5)
    async def android(self, push: Push) -> None:
        self.log.info('PUSHED to android, user %d: %s', push.user_id, push.text)

    @consumer(push_ios, timeout=5)
    async def ios(self, push: Push) -> None:
        self.log.info('PUSHED to iOS, user %d: %s', push.user_id, push.text)
