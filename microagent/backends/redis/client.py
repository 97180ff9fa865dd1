"""The Redis clients of the backend: one server's or a cluster's, for commands or for blocking reads."""
from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from microagent.backends.redis.cluster import cluster_client, is_cluster
from microagent.backends.redis.dsn import check_dsn
from microagent.backends.redis.wire import HIREDIS, HiredisPacking

__all__ = ['DEFAULT_DSN', 'FAILOVER_TIMEOUT', 'NETWORK_ERRORS', 'Client', 'client']

DEFAULT_DSN = 'redis://localhost:6379/0'
#: how long (s) commands on a Redis Cluster retry while a master fails over, by default
FAILOVER_TIMEOUT = 20.0
#: what a lost or unreachable server raises
NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)

#: the command client: one server's, or a cluster's (``redis+cluster://``, see ``cluster.py``)
Client = Redis | RedisCluster


def client(dsn: str, options: dict[str, Any], reader: bool = False,
           failover_timeout: float = FAILOVER_TIMEOUT) -> Client:
    """A client from the DSN (``rediss://``, user, password and db are honoured by redis-py).

    Commands retry a few times on a connection error (redis-py's ``from_url`` default is none).
    A ``reader`` (blocking reads of the subscriber and consumers) has no redis-py retries, so our
    loop logs and backs off, and no socket timeout: redis-py's default 5 s would kill an idle
    reader, and on Python 3.11 its ``wait_for`` around sends can swallow a cancellation. Its
    calls are bounded by ``asyncio.timeout`` instead, and TCP keepalive finds dead peers.
    A cluster DSN gives a cluster client, whose commands ride out a failover (not the reader's).
    A malformed DSN is an ``InvalidArgument`` naming the part that is wrong (``dsn.py``)."""
    check_dsn(dsn)
    if is_cluster(dsn):
        return cluster_client(dsn, options, reader=reader, failover_timeout=failover_timeout)
    if reader:
        options = {**options, 'retry': Retry(NoBackoff(), 0), 'socket_timeout': None}
    else:  # a pooled connection left stale by a server restart reconnects instead of failing a send
        options = {'retry': Retry(ExponentialBackoff(cap=1.0, base=0.05), 3), **options}
    if HIREDIS and 'encoding' not in options and 'connection_class' not in options:
        options['connection_class'] = HiredisPacking  # unix:// and rediss:// keep their own class
    return Redis.from_url(dsn, **options)
