"""The Redis backend: pub/sub signals and reliable list queues, wire-compatible with microagent 1.x.

The 1.x class names join an engine and a transport: ``RedisSignalBus`` = bus engine +
``RedisBusTransport`` (``bus.py``), ``RedisBroker`` = broker engine + ``RedisQueueTransport``
(``queue.py``). This is the only module of the package that imports the engines; the rest is
built on the core below them:

- ``wire.py``: the format (frames or bare 1.x bodies), the 1.x channel names, the RPC reply
  address and which requests are answered bare, the packing of commands;
- ``keys.py``: every key name; ``scripts/``: the Lua scripts, as ``.lua`` files;
- ``groups.py`` and ``registry.py``: signal groups on Redis streams, and how buses know them;
- ``ownership.py``: heartbeats, reclaiming the messages of dead consumers, orphans;
- ``replicas.py``: sends confirmed by replicas (``wait_replicas``);
- ``client.py`` and ``cluster.py``: the clients, of one server or of a Redis Cluster
  (``redis+cluster://host:port,host:port/``, each queue's keys in the slot of its list).
"""
from __future__ import annotations

import logging
from typing import Any

from microagent.backends.redis.bus import RedisBusTransport
from microagent.backends.redis.client import DEFAULT_DSN, FAILOVER_TIMEOUT, Client
from microagent.backends.redis.queue import DEFAULT_MAX_FETCH_BYTES, RedisQueueTransport
from microagent.backends.redis.wire import Wire
from microagent.broker import DEFAULT_MAX_MESSAGE_SIZE, AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.errors import InvalidArgument
from microagent.groups import GroupOptions
from microagent.signing import SigningKey

__all__ = ['RedisBroker', 'RedisBusTransport', 'RedisQueueTransport', 'RedisSignalBus', 'Wire']

#: how long ``marun`` tries to reach Redis when it starts an agent before it gives up (exit 3); the
#: client itself reconnects for ever once running
CONNECT_TIMEOUT = 30.0


class RedisSignalBus(AbstractSignalBus):
    """Signals over Redis pub/sub: ``RedisSignalBus('redis://localhost/7', prefix='MYAPP')``, or on
    a Redis Cluster ``RedisSignalBus('redis+cluster://host1:7000,host2:7000/')``.

    ``wire='1.x'`` sends bare 1.x bodies, for 1.x agents listening on the same Redis. Extra keyword
    options go to ``redis.asyncio.Redis.from_url`` (e.g. ``socket_timeout``), or to ``RedisCluster``;
    on a cluster, sends retry for up to ``failover_timeout`` s while a master fails over.
    ``connect_timeout``: how long ``marun`` tries to reach Redis before it gives up on the agent.
    ``group_options`` set the retention and visibility timeout of this bus's signal groups (Redis
    streams, ``groups.py``). ``wait_replicas=1`` makes a send of a signal that has a group return
    only once a replica has its stream entry (``WAIT``; ``NotReplicated`` after ``wait_timeout``
    s); signals without groups are published as always. The transport is ``bus.transport``."""

    transport: RedisBusTransport

    def __init__(self, dsn: str = DEFAULT_DSN, prefix: str = 'PUBSUB', log: logging.Logger | None = None, *,
                 wire: Wire = 'envelope', max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 failover_timeout: float = FAILOVER_TIMEOUT, signing_key: SigningKey | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, group_options: GroupOptions | None = None,
                 wait_replicas: int = 0, wait_timeout: float = 1.0, **redis_options: Any) -> None:
        _check_signed_wire(wire, signing_key)
        self.connect_timeout = connect_timeout
        transport = RedisBusTransport(dsn, prefix, log=log, wire=wire, failover_timeout=failover_timeout,
                                      wait_replicas=wait_replicas, wait_timeout=wait_timeout, **redis_options)
        super().__init__(transport, dsn=dsn, prefix=prefix, log=log, max_message_size=max_message_size,
                         signing_key=signing_key, group_options=group_options)

    @property
    def redis(self) -> Client:
        """The transport's command client, which code written for the former class reaches for."""
        return self.transport.redis


class RedisBroker(AbstractQueueBroker):
    """Reliable queues on Redis lists: ``RedisBroker('redis://localhost/7')``, or on a Redis Cluster
    ``RedisBroker('redis+cluster://host1:7000,host2:7000/')`` (keys of a queue in its list's slot).

    ``heartbeat`` is how long (s) a silent consumer is trusted before its in-flight messages go back
    to the queue; ``wire='1.x'`` stores bare 1.x bodies, for 1.x consumers of the same queues.
    Replication is asynchronous: a master that fails loses the writes it acked and had not passed
    on yet. A fetch takes at most ``max_fetch_bytes`` (16 MiB) of messages (a larger one alone); a
    message over ``max_message_size`` is dead-lettered at fetch, unread. ``wait_replicas=1`` makes
    a send return only once a replica has the message (``WAIT``; ``NotReplicated`` after
    ``wait_timeout`` s). On a cluster, commands retry for up to ``failover_timeout`` s while a master
    fails over. ``connect_timeout``: how long ``marun`` tries to reach Redis before it gives up on the
    agent. Extra keyword options go to ``redis.asyncio.Redis.from_url`` (or ``RedisCluster``).
    The transport is ``broker.transport``."""

    transport: RedisQueueTransport

    def __init__(self, dsn: str = DEFAULT_DSN, log: logging.Logger | None = None, *, wire: Wire = 'envelope',
                 heartbeat: float = 10.0, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 wait_replicas: int = 0, wait_timeout: float = 1.0, failover_timeout: float = FAILOVER_TIMEOUT,
                 max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES, signing_key: SigningKey | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, **redis_options: Any) -> None:
        _check_signed_wire(wire, signing_key)
        self.connect_timeout = connect_timeout
        transport = RedisQueueTransport(dsn, log=log, wire=wire, heartbeat=heartbeat, wait_replicas=wait_replicas,
                                        wait_timeout=wait_timeout, failover_timeout=failover_timeout,
                                        max_message_size=max_message_size, max_fetch_bytes=max_fetch_bytes,
                                        **redis_options)
        super().__init__(transport, dsn=dsn, log=log, max_message_size=max_message_size, signing_key=signing_key)

    @property
    def redis(self) -> Client:
        """The transport's command client, which code written for the former class reaches for."""
        return self.transport.redis


def _check_signed_wire(wire: Wire, signing_key: SigningKey | None) -> None:
    """The 1.x wire carries no headers, so no signature: with a key every message would be refused."""
    if signing_key is not None and wire == '1.x':
        raise InvalidArgument("signing_key needs wire='envelope': the 1.x wire carries no headers, so no signature")
