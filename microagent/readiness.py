"""Readiness, as a probe asks it: what keeps a bus, a broker or an agent from doing its work now.

Each answers ``await x.readiness()`` with a list of reasons, empty when ready, so a probe can say
what is wrong (``/ready`` turns them into a 503 body) instead of a bare false. Every check is a
round trip bounded by ``timeout``: a server that hangs makes the probe fail, never hang.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ['PING_TIMEOUT', 'pinged']

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
