"""Several hosts in an AMQP DSN: when the node a broker is connected to goes down, publishers and
consumers move to the next host by themselves. Two loopback proxies to the one local RabbitMQ play
two nodes of a cluster; killing one cuts its connections the way a node going down does."""
from __future__ import annotations

import logging

import msgspec
import pytest

from microagent import MicroAgent, Queue, consumer
from microagent.backends.amqp import AMQPBroker
from microagent.queue import QueueType
from tests.amqp_support import delete_declared
from tests.helpers import Collector, eventually
from tests.services import AMQP_HOST, AMQP_PORT
from tests.tcp_proxy import Proxy

pytestmark = pytest.mark.amqp


class Job(msgspec.Struct, frozen=True):
    job_id: int


def _dsn(*ports: int) -> str:
    return 'amqp://guest:guest@' + ','.join(f'127.0.0.1:{port}' for port in ports) + '/'


async def _all_handled(handled: Collector, count: int) -> bool:
    return set(handled.items) >= set(range(count))


def _host(port: int) -> str:
    return f'amqp://guest:***@127.0.0.1:{port}/'


@pytest.mark.parametrize('queue_type', ['classic', 'quorum'])
async def test_consumer_and_publisher_fail_over_to_the_next_host_and_lose_nothing(
        unique: str, queue_type: QueueType, caplog: pytest.LogCaptureFixture) -> None:
    queue = Queue(f'failover_{queue_type}_{unique}', Job)
    handled = Collector()

    class Worker(MicroAgent):
        @consumer(queue, concurrency=4)
        async def work(self, job: Job) -> None:
            handled.add(job.job_id)

    async with Proxy(AMQP_HOST, AMQP_PORT) as first, Proxy(AMQP_HOST, AMQP_PORT) as second:
        dsn = _dsn(first.port, second.port)
        worker_broker, producer = AMQPBroker(dsn, queue_type=queue_type), AMQPBroker(dsn, queue_type=queue_type)
        try:
            with caplog.at_level(logging.INFO, logger='microagent'):
                async with Worker(broker=worker_broker):
                    await producer[queue].send_many([Job(job_id=i) for i in range(20)])
                    await handled.wait(20)
                    assert (first.accepted, second.accepted) == (2, 0)  # both on the first host

                    await first.kill()  # that node goes down
                    await producer[queue].send_many([Job(job_id=i) for i in range(20, 40)])  # on the second
                    await eventually(lambda: _all_handled(handled, 40), timeout=20)  # at least once each
            assert second.accepted == 2
            assert set(handled.items) == set(range(40))
            assert f'lost the connection to RabbitMQ at {_host(first.port)}' in caplog.text
            assert f'reconnecting on next use, to {_host(second.port)}' in caplog.text
            assert f'Queue {queue.name}: consuming again' in caplog.text
            assert 'guest:guest' not in caplog.text
        finally:
            await worker_broker.close()
            await producer.close()
            await delete_declared([worker_broker, producer])


async def test_a_host_that_is_down_is_skipped_at_once(unique: str, caplog: pytest.LogCaptureFixture) -> None:
    queue = Queue(f'skip_down_{unique}', Job)
    down = await Proxy(AMQP_HOST, AMQP_PORT).start()
    await down.kill()  # nothing listens on its port any more
    async with Proxy(AMQP_HOST, AMQP_PORT) as up:
        broker = AMQPBroker(_dsn(down.port, up.port))
        try:
            with caplog.at_level(logging.WARNING, logger='microagent'):
                await broker[queue].send(Job(job_id=1))
            assert await broker[queue].length() == 1
            assert up.accepted == 1
            assert (f'connecting to RabbitMQ at {_host(down.port)} failed' in caplog.text
                    and f'next in 0.0s at {_host(up.port)}' in caplog.text)  # no backoff before a round is done
        finally:
            await broker.close()
            await delete_declared([broker])


async def test_every_host_down_backs_off_and_names_them(unique: str) -> None:
    downs = [await Proxy(AMQP_HOST, AMQP_PORT).start() for _ in range(2)]
    for proxy in downs:
        await proxy.kill()
    broker = AMQPBroker(_dsn(*(p.port for p in downs)), reconnect_timeout=0.5)
    try:
        with pytest.raises(ConnectionError, match='is unreachable') as caught:
            await broker[Queue(f'nowhere_{unique}', Job)].send(Job(job_id=1))
        assert f'127.0.0.1:{downs[0].port},127.0.0.1:{downs[1].port}' in str(caught.value)
        assert 'guest:guest' not in str(caught.value)
    finally:
        await broker.close()
