"""Rate limits shared by every process of a fleet through its Redis server: one GCRA script
(``scripts/rate.lua``) per take, on the server's clock (``TIME``), so process clocks do not matter.

A limit is one key, ``microagent:rate:{name}`` (a consumer's ``queue:{queue}``, ``agent.limit``'s
``limit:{name}``), holding its theoretical arrival time; it expires once that time is past, so a
limit at rest leaves nothing behind. Each call touches that one key: on a Redis Cluster a limit
lives in the slot of its key.
"""
from __future__ import annotations

from typing import Any

from microagent.backends.redis import scripts as lua
from microagent.backends.redis.client import Client
from microagent.ratelimit import Rate

__all__ = ['RedisLimiter', 'rate_key']

MICROSECONDS = 1_000_000


def rate_key(name: str) -> str:
    """The Redis key of a limit."""
    return f'microagent:rate:{name}'


class RedisLimiter:
    """``ratelimit.Limiter`` over one Redis server or cluster; a script error or a lost server
    raises (the consume loop logs it and backs off, a handler's ``limit`` fails its call)."""

    def __init__(self, redis: Client) -> None:
        self._script: Any = redis.register_script(lua.SCRIPTS['RATE'])

    async def take(self, key: str, rate: Rate, want: int) -> tuple[int, float]:
        granted, wait = await self._script(keys=[rate_key(key)],
                                           args=[repr(rate.interval * MICROSECONDS), rate.burst, want])
        return int(granted), int(wait) / MICROSECONDS

    async def give_back(self, key: str, rate: Rate, count: int) -> None:
        if count > 0:
            await self._script(keys=[rate_key(key)], args=[repr(rate.interval * MICROSECONDS), rate.burst, -count])
