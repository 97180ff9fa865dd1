"""Redis Cluster for the Redis backend: the DSN, a client that rides out a failover, the subscriber.

``redis+cluster://[user:password@]host:port[,host:port...][/][?options]`` (``rediss+cluster://``
with TLS) names some nodes of one cluster; redis-py's ``RedisCluster`` discovers the rest. Query
options are those of a ``redis://`` DSN. A cluster has database 0 only.

Why a subclass: when a master dies, its slots answer nothing until a replica is promoted (the
cluster's ``cluster-node-timeout`` plus an election). redis-py retries a few times at once and then
raises, so a send or an ack in that window would fail although the cluster heals a second later.
``FailoverCluster`` retries such commands, with backoff, for up to ``failover_timeout`` seconds.

Signals: plain ``PUBLISH`` reaches every node of a cluster, so a subscriber listens on one node and
moves to another when it loses it (``ClusterListener``). Sharded pub/sub would spread the load, but
has no pattern subscriptions, which the 1.x channel names need.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from microagent.backends.redis.dsn import host_port
from microagent.errors import InvalidArgument
from microagent.retry import backoff

__all__ = ['SCHEMES', 'ClusterListener', 'FailoverCluster', 'cluster_client', 'connect_options', 'is_cluster',
           'master_of']

SCHEMES = ('redis+cluster', 'rediss+cluster')
#: errors of a cluster in the middle of a failover: the command did not run, or may be run again
FAILOVER_ERRORS = (RedisConnectionError, RedisTimeoutError, ClusterDownError, SlotNotCoveredError, TryAgainError,
                   OSError)


def is_cluster(dsn: str) -> bool:
    return dsn.partition('://')[0].lower() in SCHEMES


def _split_nodes(dsn: str) -> tuple[str, list[tuple[str, int]], str]:
    """(``redis://`` or ``rediss://`` with the userinfo, [(host, port)], path and query)."""
    scheme, _, rest = dsn.partition('://')
    cut = min((i for i in (rest.find(c) for c in '/?#') if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:cut].rpartition('@')
    nodes = []
    for part in hosts.split(','):
        host, port = host_port(dsn, part.strip())  # [::1]:7000, host:7000 or host (6379)
        if not host:
            raise InvalidArgument(f'a Redis Cluster DSN lists host:port pairs, got {part!r}')
        nodes.append((host, port))
    plain = 'rediss' if scheme.lower() == 'rediss+cluster' else 'redis'
    return f'{plain}://{userinfo}{at}', nodes, rest[cut:]


def connect_options(dsn: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The startup nodes and the connection options (user, password, TLS, query options) of a
    cluster DSN, as redis-py reads a ``redis://`` DSN; any database but 0 is an error."""
    head, nodes, tail = _split_nodes(dsn)
    host, port = nodes[0]
    options: dict[str, Any] = dict(parse_url(f'{head}{host}:{port}{tail}'))
    if options.pop('db', 0):
        raise InvalidArgument(f'a Redis Cluster has database 0 only: {tail!r}')
    options.pop('host', None)
    options.pop('port', None)
    if options.pop('connection_class', None) is SSLConnection:
        options['ssl'] = True
    return nodes, options


class FailoverCluster(RedisCluster):
    """A ``RedisCluster`` whose commands ride out a failover: retried with backoff on connection
    and cluster-down errors for up to ``failover_timeout`` s (0: redis-py's own retries only)."""

    failover_timeout: float = 0.0

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.failover_timeout
        failures = 0
        while True:
            try:
                return await super().execute_command(*args, **kwargs)
            except FAILOVER_ERRORS:
                failures += 1
                if time.monotonic() + backoff(failures, 0.05, 0.5) > deadline:
                    raise
                await asyncio.sleep(backoff(failures, 0.05, 0.5))


def cluster_client(dsn: str, options: dict[str, Any], *, reader: bool = False,
                   failover_timeout: float = 0.0) -> FailoverCluster:
    """A cluster client for the DSN. A ``reader`` (blocking reads) gets neither retries nor a socket
    timeout, as on one server: its caller bounds each read and backs off."""
    nodes, parsed = connect_options(dsn)
    merged: dict[str, Any] = {**parsed, **options}
    if reader:
        merged.update(retry=Retry(NoBackoff(), 0), socket_timeout=None)
    client = FailoverCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes], **merged)
    client.failover_timeout = 0.0 if reader else failover_timeout
    return client


def master_of(cluster: RedisCluster, key: str) -> ClusterNode | None:
    """The master of ``key``'s slot in the client's slot map; None before it has one."""
    try:
        return cluster.get_node_from_key(key)
    except SlotNotCoveredError:
        return None


class ClusterListener:
    """The subscriber's connection: to one node of the cluster (any: ``PUBLISH`` reaches them all),
    and to the next known node after ``failed()``."""

    def __init__(self, dsn: str, options: dict[str, Any], cluster: RedisCluster) -> None:
        self._startup, parsed = connect_options(dsn)
        self._options = {**parsed, **options, 'retry': Retry(NoBackoff(), 0), 'socket_timeout': None}
        self._cluster = cluster
        self._turn = 0
        self._client: Redis | None = None
        self.listening: tuple[str, int] | None = None  #: the node of the current connection

    @property
    def node(self) -> tuple[str, int]:
        """The node listened to now (or next)."""
        nodes = self._nodes()
        return nodes[self._turn % len(nodes)]

    def _nodes(self) -> list[tuple[str, int]]:
        known = sorted({(node.host, int(node.port)) for node in self._cluster.get_nodes()})
        return known or self._startup

    def pubsub(self) -> PubSub:
        if self._client is None:
            host, port = self.listening = self.node
            self._client = Redis(host=host, port=port, **self._options)
        return self._client.pubsub()

    async def failed(self) -> None:
        """The node was lost: listen to the next one from now on."""
        self._turn += 1
        await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
