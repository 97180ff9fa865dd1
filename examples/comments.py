"""The comment service: answers the ``comments_count`` RPC with a typed ``int``."""
from __future__ import annotations

from microagent import MicroAgent, receiver
from schemas import CountQuery, comments_count


class CommentAgent(MicroAgent):
    @receiver(comments_count)
    async def count(self, query: CountQuery, *, sender: str) -> int:
        count = query.user_id * 7 % 5  # stands in for a database query
        self.log.info('ANSWERED comments_count for user %d from %s: %d', query.user_id, sender, count)
        return count
