"""Sends that replicas confirm (``wait_replicas``): the command, then ``WAIT`` on the same connection.

Replication is asynchronous: a master that fails loses the writes it acked and had not passed on
yet. ``WAIT`` counts the writes of its own connection, so on a cluster the command goes through a
plain client to the master of the key's slot (a cluster client's pool does not keep connections).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MovedError

from microagent.backends.redis.client import Client
from microagent.backends.redis.cluster import FAILOVER_ERRORS, connect_options, master_of
from microagent.errors import InvalidArgument, NotReplicated
from microagent.retry import backoff

__all__ = ['Replicas']


def check_wait(wait_replicas: object, wait_timeout: object) -> tuple[int, float]:
    """``wait_replicas`` (0: do not wait) and ``wait_timeout`` (s) as a bus or broker takes them, or
    ``InvalidArgument`` naming the bad one."""
    if isinstance(wait_replicas, bool) or not isinstance(wait_replicas, int) or wait_replicas < 0:
        raise InvalidArgument(f'wait_replicas must be a count of replicas (0: do not wait), got {wait_replicas!r}')
    if isinstance(wait_timeout, bool) or not isinstance(wait_timeout, int | float) \
            or not 0 < wait_timeout < math.inf:
        raise InvalidArgument(f'wait_timeout must be positive (seconds), got {wait_timeout!r}')
    return wait_replicas, float(wait_timeout)


class Replicas:
    """Runs a write on the master of its key and waits until ``count`` replicas have it, for up to
    ``timeout`` s (``NotReplicated`` if fewer did)."""

    def __init__(self, redis: Client, dsn: str, redis_options: dict[str, Any], *, count: int, timeout: float,
                 failover_timeout: float, log: logging.Logger) -> None:
        self.redis = redis
        self.dsn = dsn
        self.wait_replicas = count
        self.wait_timeout = timeout
        self.failover_timeout = failover_timeout
        self.log = log
        self._redis_options = redis_options
        self._node_clients: dict[str, Redis] = {}  # on a cluster: a plain client per master

    @property
    def clients(self) -> list[Redis]:
        """The clients of the masters, which the transport closes."""
        return list(self._node_clients.values())

    async def run(self, key: str, *command: Any) -> Any:
        """Run ``command`` on the master of ``key``, then ``WAIT`` on the same connection until
        ``wait_replicas`` replicas have it (``NotReplicated`` if fewer did in ``wait_timeout``).
        On a cluster, a stale slot map (a failover, a resharding) is refreshed and the command sent
        again, for up to ``failover_timeout`` s: a command that may have run is then run twice (at
        least once, as every retried send)."""
        deadline = time.monotonic() + self.failover_timeout
        failures = 0
        while True:
            client = await self._master_client(key)
            try:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.execute_command(*command)
                    pipe.execute_command('WAIT', self.wait_replicas, int(self.wait_timeout * 1000))
                    result, acked = await pipe.execute()
                break
            except (*FAILOVER_ERRORS, MovedError) as exc:
                if client is self.redis or time.monotonic() > deadline:
                    raise
                failures += 1
                await self._refresh_slots(key, exc)
                await asyncio.sleep(backoff(failures, 0.05, 0.5))
        if int(acked) < self.wait_replicas:
            raise NotReplicated(f'{self.wait_replicas} replicas asked, {acked} confirmed within '
                                f'{self.wait_timeout}s; the message is on the master and is lost if it fails now')
        return result

    async def _master_client(self, key: str) -> Client:
        """One server's client; on a cluster a plain client to the master of ``key``'s slot (WAIT
        counts the writes of its own connection, which a cluster client's pool does not keep)."""
        if not isinstance(self.redis, RedisCluster):
            return self.redis
        node = master_of(self.redis, key)
        if node is None:  # no slot map yet (nothing sent), or the slot is not covered now
            await self.redis.initialize()
            node = master_of(self.redis, key)
            if node is None:
                raise NotReplicated(f'no master serves the slot of {key!r} now; the message was not sent')
        client = self._node_clients.get(node.name)
        if client is None:
            _, options = connect_options(self.dsn)
            client = self._node_clients[node.name] = Redis(
                host=node.host, port=int(node.port), **{**options, **self._redis_options})
        return client

    async def _refresh_slots(self, key: str, exc: Exception) -> None:
        """After a MOVED or a lost master, a keyed command through the cluster client updates its
        slot map (and rides out the failover)."""
        self.log.info('%s: the master of its slot changed (%s: %s); sending again', key, type(exc).__name__, exc)
        assert isinstance(self.redis, RedisCluster)
        with contextlib.suppress(*FAILOVER_ERRORS):
            await self.redis.exists(key)

