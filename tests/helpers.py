"""Small test utilities: await what happens instead of sleeping."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class Collector:
    """Records calls; ``wait(n)`` returns once ``n`` calls have been recorded."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def add(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait(self, count: int, timeout: float = 5.0) -> list[Any]:
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.items


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0, every: float = 0.02) -> None:
    """Poll an external state (a queue length, a dead-letter count) until it holds."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - polls external state, nothing to await
            await asyncio.sleep(every)
