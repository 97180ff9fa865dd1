"""NATS backend on nats-py: ``NATSBusTransport`` (core NATS subjects, ``bus``) and
``NATSQueueTransport`` (JetStream work queues, ``queue``), and the 1.x-style names ``NATSSignalBus``
and ``NATSBroker`` = the engine over them.

The modules, one concept each: ``bus``; ``groups`` (signal groups: a stream per signal, a durable
consumer per group); ``queue`` (the queue transport) with ``layout`` (the names
of streams and subjects), ``later`` (the holding stream of delayed messages and retries), ``acks``
(pipelined JetStream publishes) and ``headers`` (the stored headers and the backend's own header
names); ``limits`` (message sizes against the server's ``max_payload``), ``link`` (the connection).
Only this module joins them to the engines.
"""
from __future__ import annotations

import logging
from typing import Any

from microagent.backends.nats.bus import NATSBusTransport
from microagent.backends.nats.queue import NATSQueueTransport
from microagent.broker import AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.groups import GroupOptions

__all__ = ['NATSBroker', 'NATSBusTransport', 'NATSQueueTransport', 'NATSSignalBus']


class NATSSignalBus(AbstractSignalBus):
    """The signal bus on core NATS: the engine over a ``NATSBusTransport``. Grouped receivers read
    JetStream streams (``groups``) kept within ``group_options``."""

    transport: NATSBusTransport

    def __init__(self, dsn: str, prefix: str = 'PUBSUB', log: logging.Logger | None = None, *,
                 connect_timeout: float = 5.0, group_options: GroupOptions | None = None, **options: Any) -> None:
        transport = NATSBusTransport(dsn, prefix, log, connect_timeout=connect_timeout)
        super().__init__(transport, dsn=dsn, prefix=prefix, log=log, group_options=group_options, **options)
        self.connect_timeout = connect_timeout  # marun's bound on reaching the server at start
        transport.max_message_size = self.max_message_size
        transport.rename(f'microagent bus {prefix} {self.uid[:8]}')


class NATSBroker(AbstractQueueBroker):
    """The queue broker on JetStream: the engine over a ``NATSQueueTransport``. ``ack_wait`` is how
    long a fetched message may stay unsettled by a silent process before NATS delivers it again
    (a live process tells the server it is still at work, so a long handler keeps its message);
    ``connect_timeout`` bounds a first connection (after it, the client reconnects for ever)."""

    transport: NATSQueueTransport

    def __init__(self, dsn: str, log: logging.Logger | None = None, *, ack_wait: float = 30.0,
                 connect_timeout: float = 5.0, **options: Any) -> None:
        transport = NATSQueueTransport(dsn, log, ack_wait=ack_wait, connect_timeout=connect_timeout)
        super().__init__(transport, dsn=dsn, log=log, **options)
        self.connect_timeout = connect_timeout  # marun's bound on reaching the server at start
        transport.rename(f'microagent broker {self.uid[:8]}')
        transport.max_message_size = self.max_message_size
