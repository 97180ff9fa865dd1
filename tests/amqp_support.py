"""RabbitMQ test support: the DSN, and removal of what a test declared on the server."""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import aiormq

from microagent.tools.amqp import AMQPBroker, AMQPSignalBus
from tests.services import AMQP_HOST, AMQP_PORT, require_service

AMQP_DSN = os.environ.get('MICROAGENT_AMQP_DSN', f'amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/')


def require_rabbitmq() -> None:
    require_service('RabbitMQ', AMQP_HOST, AMQP_PORT)


async def delete_declared(opened: Iterable[Any], exchanges: Iterable[str] = ()) -> None:
    """Delete every queue and exchange the brokers declared, the buses' exchanges and ``exchanges``."""
    queues: set[str] = set()
    names = set(exchanges)
    for item in opened:
        if isinstance(item, AMQPBroker):
            queues |= item.declared_queues
            names |= item.declared_exchanges
        elif isinstance(item, AMQPSignalBus):
            names.add(item.prefix)
    connection = await aiormq.connect(AMQP_DSN)
    try:
        channel = await connection.channel()
        for queue in sorted(queues):
            await channel.queue_delete(queue)
        for exchange in sorted(names):
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()
