"""Readiness, as a probe asks it: what keeps a bus, a broker or an agent from doing its work now.

Each answers ``await x.readiness()`` with a list of reasons, empty when ready, so a probe can say
what is wrong (``/ready`` turns them into a 503 body) instead of a bare false. Every check is a
round trip bounded by ``timeout``: a server that hangs makes the probe fail, never hang.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from microagent.errors import ConnectionFailed

__all__ = ['PING_TIMEOUT', 'pinged', 'reach']

#: seconds a ping may take before the probe reports it (k8s probes time out after 1 s by default:
#: set ``timeoutSeconds`` above this)
PING_TIMEOUT = 2.0


async def pinged(what: str, ping: Callable[[], Awaitable[None]], timeout: float = PING_TIMEOUT) -> list[str]:
    """``[]`` when ``ping()`` returned within ``timeout`` seconds, else one reason naming ``what``."""
    try:
        async with asyncio.timeout(timeout):
            await ping()
    except TimeoutError:
        return [f'{what}: no answer to ping within {timeout:g}s']
    except Exception as exc:
        return [f'{what}: ping failed: {type(exc).__name__}: {exc}']
    return []


async def reach(what: str, ping: Callable[[], Awaitable[None]], bound: float) -> None:
    """Return once ``ping()`` succeeds, trying for up to ``bound`` seconds (backing off from 0.1 to
    2 s between tries), else raise ``ConnectionFailed`` naming ``what``, the bound and the last error:
    a process started against a server that is not there gives up instead of waiting for ever."""
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + bound, 0.1
    while True:
        try:
            async with asyncio.timeout(max(min(PING_TIMEOUT, deadline - loop.time()), 0.05)):
                await ping()
            return
        except Exception as exc:
            if loop.time() + pause >= deadline:
                why = 'no answer' if isinstance(exc, TimeoutError) else f'{type(exc).__name__}: {exc}'
                raise ConnectionFailed(f'{what}: unreachable, gave up after {bound:g}s ({why})') from None
        await asyncio.sleep(pause)
        pause = min(pause * 2, 2.0)
