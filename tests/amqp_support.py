"""RabbitMQ test support: the DSN, and removal of what a test declared on the server."""
from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterable
from typing import Any

import aiormq
import pytest

from microagent.backends.amqp import AMQPBroker, AMQPBusTransport, AMQPQueueTransport, AMQPSignalBus
from microagent.signing import unwrapped
from tests.services import AMQP_HOST, AMQP_PORT, require_service

AMQP_DSN = os.environ.get('MICROAGENT_AMQP_DSN', f'amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/')


def require_rabbitmq() -> None:
    require_service('RabbitMQ', AMQP_HOST, AMQP_PORT)


async def delete_declared(opened: Iterable[Any], exchanges: Iterable[str] = ()) -> None:
    """Delete every queue and exchange the brokers declared, the stores of the buses' signal groups,
    the buses' exchanges and ``exchanges``."""
    queues: set[str] = set()
    names = set(exchanges)
    opened = list(opened)
    for item in list(opened):
        groups = getattr(item, '_groups', None)  # a bus's signal groups: their stores
        if isinstance(item, AMQPSignalBus) and groups is not None:
            opened.append(groups.transport)
    for item in opened:
        if isinstance(item, AMQPBroker | AMQPSignalBus):
            item = unwrapped(item.transport)  # under a signing wrapper, if any
        if isinstance(item, AMQPQueueTransport):
            queues |= item.declared_queues
            names |= item.declared_exchanges
        elif isinstance(item, AMQPBusTransport):
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


async def break_connections(token: str) -> int:
    """Close, on the server side, every connection whose client name contains ``token`` (as
    ``rabbitmqctl close_connection`` would on a broker restart); return how many."""
    _need_rabbitmqctl('break connections')
    listing = await _rabbitmqctl('-q', 'list_connections', '--no-table-headers', 'pid', 'client_properties')
    pids = [line.split('\t', 1)[0] for line in listing.splitlines() if token in line]
    for pid in pids:
        await _rabbitmqctl('-q', 'close_connection', pid, 'broken by a test')
    return len(pids)


async def queue_types() -> dict[str, str]:
    """Every queue of the default vhost by name, with its type (classic, quorum) as RabbitMQ has it."""
    _need_rabbitmqctl('inspect the server')
    listing = await _rabbitmqctl('-q', 'list_queues', '--no-table-headers', 'name', 'type')
    return dict(line.split('\t', 1) for line in listing.splitlines() if '\t' in line)


def _need_rabbitmqctl(purpose: str) -> None:
    if shutil.which('rabbitmqctl') is None:
        message = f'rabbitmqctl is not installed: cannot {purpose}'
        if os.environ.get('MICROAGENT_REQUIRE_SERVICES'):
            pytest.fail(message)
        pytest.skip(message)


async def _rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec('rabbitmqctl', *args, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    if process.returncode:
        raise RuntimeError(f'rabbitmqctl {" ".join(args)} failed: {err.decode(errors="replace")}')
    return out.decode()


class Servers:
    """The buses and brokers of one test (on a unique bus prefix), plus a raw channel to inspect
    the server; ``close`` closes them and deletes everything they declared."""

    def __init__(self) -> None:
        self.prefix = f'T{uuid.uuid4().hex[:12]}'
        self.opened: list[Any] = []
        self.exchanges: set[str] = {self.prefix}
        self._raw: aiormq.abc.AbstractConnection | None = None

    def broker(self, **options: Any) -> AMQPBroker:
        broker = AMQPBroker(AMQP_DSN, **options)
        self.opened.append(broker)
        return broker

    def bus(self, **options: Any) -> AMQPSignalBus:
        bus = AMQPSignalBus(AMQP_DSN, prefix=self.prefix, **options)
        self.opened.append(bus)
        return bus

    def queue_transport(self, **options: Any) -> AMQPQueueTransport:
        transport = AMQPQueueTransport(AMQP_DSN, **options)
        self.opened.append(transport)
        return transport

    def bus_transport(self, **options: Any) -> AMQPBusTransport:
        transport = AMQPBusTransport(AMQP_DSN, prefix=self.prefix, **options)
        self.opened.append(transport)
        return transport

    async def raw(self) -> aiormq.abc.AbstractChannel:
        """A new channel on a plain aiormq connection of the test's own."""
        if self._raw is None or self._raw.is_closed:
            self._raw = await aiormq.connect(AMQP_DSN)
        return await self._raw.channel()

    async def close(self) -> None:
        for item in self.opened:
            await item.close()
        if self._raw is not None:
            await self._raw.close()
        await delete_declared(self.opened, self.exchanges)
