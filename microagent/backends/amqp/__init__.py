"""RabbitMQ backend on aiormq: ``AMQPQueueTransport`` (durable queues, ``queue``) and
``AMQPBusTransport`` (a topic exchange, ``bus``) with its signal groups (``AMQPGroupTransport``,
``groups``), and the 1.x names ``AMQPBroker`` and ``AMQPSignalBus`` = the engine over them.

The modules, one concept each: ``queue`` (the queue transport) on ``declarations`` (the layout on
the server), ``settle`` (a delivery until it is settled) and ``dead_letters``; ``bus``; ``headers``
(the wire mapping of properties and headers, and the backend's own header names); ``link`` (the
connection and the publisher), ``hosts`` (cluster DSNs) and ``queue_args`` (quorum queues). Only
this module joins them to the engines.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from microagent.backends.amqp.bus import AMQPBusTransport
from microagent.backends.amqp.groups import AMQPGroupTransport
from microagent.backends.amqp.queue import AMQPQueueTransport
from microagent.backends.amqp.queue_args import DEFAULT_DELIVERY_LIMIT
from microagent.backends.amqp.settle import AMQPMeta
from microagent.broker import AbstractQueueBroker
from microagent.bus import AbstractSignalBus
from microagent.groups import GroupOptions
from microagent.queue import QueueType

__all__ = ['AMQPBroker', 'AMQPBusTransport', 'AMQPGroupTransport', 'AMQPMeta', 'AMQPQueueTransport', 'AMQPSignalBus']


class AMQPBroker(AbstractQueueBroker):
    """The queue broker on RabbitMQ: the engine over an ``AMQPQueueTransport`` (1.x constructor)."""

    transport: AMQPQueueTransport

    def __init__(self, dsn: str | Sequence[str], log: logging.Logger | None = None, *,
                 reconnect_timeout: float = 60.0, queue_type: QueueType = 'classic',
                 delivery_limit: int | None = DEFAULT_DELIVERY_LIMIT, **options: Any) -> None:
        """``dsn``: one server, or a cluster's nodes (``amqp://u:p@h1,h2:5673/vhost`` or a list);
        ``queue_type``: of the queues whose declaration does not say; ``delivery_limit``: of those
        that are quorum (see ``Queue``)."""
        transport = AMQPQueueTransport(dsn, log, reconnect_timeout=reconnect_timeout, queue_type=queue_type,
                                       delivery_limit=delivery_limit)
        super().__init__(transport, dsn=transport.dsn, log=log, **options)
        self.reconnect_timeout = reconnect_timeout
        transport.rename(f'microagent broker {self.uid[:8]}')


class AMQPSignalBus(AbstractSignalBus):
    """The signal bus on RabbitMQ: the engine over an ``AMQPBusTransport`` (1.x constructor)."""

    transport: AMQPBusTransport

    def __init__(self, dsn: str | Sequence[str], prefix: str = 'PUBSUB', log: logging.Logger | None = None, *,
                 reconnect_timeout: float = 60.0, group_options: GroupOptions | None = None,
                 queue_type: QueueType = 'classic', delivery_limit: int | None = DEFAULT_DELIVERY_LIMIT,
                 **options: Any) -> None:
        """``group_options``: retention of the stores of signal groups; ``queue_type`` and
        ``delivery_limit``: their RabbitMQ queue type (classic or quorum) and a quorum one's limit."""
        transport = AMQPBusTransport(dsn, prefix, log, reconnect_timeout=reconnect_timeout, queue_type=queue_type,
                                     delivery_limit=delivery_limit)
        super().__init__(transport, dsn=transport.dsn, prefix=prefix, log=log, group_options=group_options,
                         **options)
        self.reconnect_timeout = reconnect_timeout
        transport.rename(f'microagent bus {prefix} {self.uid[:8]}')
