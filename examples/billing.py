"""Billing: runs as two replicas (``'replicas': 2`` in the settings) whose grouped receiver shares
``user_created``, so each new user is billed once in all, not once per replica."""
from __future__ import annotations

from collections import Counter

from microagent import MicroAgent, on, receiver
from schemas import UserCreated, user_created

#: users billed, by user id: both replicas run in this one process on the memory backend
billed: Counter[int] = Counter()
replicas_stopped: list[int] = []


class BillingAgent(MicroAgent):
    handled: int

    @on('pre_start')
    def setup(self) -> None:
        self.handled = 0

    @receiver(user_created, group=True)  # the group is named after the marun entry: 'billing'
    async def bill(self, user: UserCreated) -> None:
        self.handled += 1
        billed[user.user_id] += 1
        self.log.info('BILLED user %d (one replica of the billing group handles it)', user.user_id)

    @on('pre_stop')
    def summary(self) -> None:
        replicas_stopped.append(self.handled)
        self.log.info('SUMMARY: this replica billed %d users', self.handled)
        if len(replicas_stopped) == 2:  # the last replica to stop speaks for the group
            twice = [user for user, times in billed.items() if times > 1]
            self.log.info('SUMMARY: the billing group billed %d users with 2 replicas (%s): %s',
                          len(billed), ' + '.join(map(str, replicas_stopped)),
                          'each once in all' if not twice else f'users billed more than once: {twice}')
